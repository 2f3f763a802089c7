"""Files written whole or not at all: a reader (or the next run, after a crash) finds the old file or the new
one, never a part of either. Every file specdecode writes whole goes through `atomic_file`: the calibration
cache, a datastore's files and manifest, the span index, bench settings, reports and figures, captions
written out, a zoo model's assembled GGUF. (The bench's results journal grows a flushed line at a time, and
a converted zoo model is a folder moved into place whole: models/zoo.py.)
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file that replaces `path` when the block ends without an error: written to a temporary file
    of its own beside `path` (same filesystem, a name no other writer takes), flushed to disk, then renamed
    over `path`. On an error `path` is left as it was and the temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    file = open(tmp, "xb")  # created with the usual permissions (umask), unlike mkstemp's 0600
    try:
        with file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write `data` (text in UTF-8, or bytes) to `path` whole or not at all (atomic_file)."""
    with atomic_file(path) as file:
        file.write(data.encode("utf-8") if isinstance(data, str) else data)
