"""Atomic files: whole or not at all, each writer on a temporary file of its own, the usual permissions."""

from __future__ import annotations

import os
import stat

import pytest

from specdecode.files import atomic_file, write_atomic


def test_a_file_is_replaced_whole_and_an_error_leaves_the_old_one(tmp_path):
    path = tmp_path / "settings.json"
    write_atomic(path, "old ✓")
    assert path.read_text(encoding="utf-8") == "old ✓"
    with pytest.raises(OSError, match="disk full"):
        with atomic_file(path) as file:
            file.write(b"half of the new")
            raise OSError("disk full (injected)")
    assert path.read_text(encoding="utf-8") == "old ✓"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.json"]  # no temporary file left
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"


def test_writers_of_one_path_never_share_a_temporary_file(tmp_path):
    path = tmp_path / "results.jsonl"
    with atomic_file(path) as first, atomic_file(path) as second:
        first.write(b"first\n")
        second.write(b"second\n")
        assert first.name != second.name and os.path.dirname(first.name) == str(tmp_path)
    assert path.read_bytes() == b"first\n"  # the outer block ends last: its whole file is the one kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]


def test_a_new_file_gets_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "manifest.json", "{}")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "manifest.json").stat().st_mode) == 0o644  # not a temporary file's 0600
