import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # tests/tiny.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest


@pytest.fixture(autouse=True)
def calibration_dir(tmp_path_factory):
    """Each test calibrates into a folder of its own: a measurement cached by one test (or by an earlier
    run on this machine) never decides another test's choices. (Its own patch: a test's monkeypatch.undo()
    leaves it in place.)"""
    folder = tmp_path_factory.mktemp("calibration")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPECDECODE_CALIBRATION_DIR", str(folder))
        yield folder
