import atexit
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))  # tests/tiny.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Fixtures of a wider scope (a module's models) calibrate here, never into the user's own calibrations.
os.environ["SPECDECODE_CALIBRATION_DIR"] = tempfile.mkdtemp(prefix="specdecode-calibration-")
atexit.register(shutil.rmtree, os.environ["SPECDECODE_CALIBRATION_DIR"], True)

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


@pytest.fixture(scope="session")
def photo():
    """matplotlib's sample photograph (Grace Hopper, 512x600 RGB): a real image nobody here made."""
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as file:
        return Image.open(file).convert("RGB")
