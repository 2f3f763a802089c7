"""Images in: every kind of source a user may hand over becomes a decoded RGB PIL image, and every bad
one gets one clear error naming it. The real photo is matplotlib's sample (grace_hopper.jpg)."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image

from specdecode.errors import SpecDecodeError
from specdecode.multimodal import image_files, load_image, load_images


@pytest.fixture(scope="module")
def photo_bytes() -> bytes:
    with cbook.get_sample_data("grace_hopper.jpg") as file:
        return file.read()


@pytest.fixture
def photo_path(tmp_path, photo_bytes):
    path = tmp_path / "grace_hopper.jpg"
    path.write_bytes(photo_bytes)
    return path


def test_every_kind_of_source_gives_the_same_rgb_pixels(photo_path, photo_bytes):
    from_path = load_image(photo_path)
    assert from_path.mode == "RGB" and from_path.size == (512, 600)
    reference = np.asarray(from_path)
    assert np.array_equal(np.asarray(load_image(str(photo_path))), reference)
    assert np.array_equal(np.asarray(load_image(photo_bytes)), reference)
    assert np.array_equal(np.asarray(load_image(Image.open(photo_path))), reference)
    assert np.array_equal(np.asarray(load_image(reference)), reference)
    assert np.array_equal(np.asarray(load_image(reference / 255.0)), reference)


def test_grey_and_rgba_arrays_become_rgb():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert load_image(grey).size == (4, 3) and np.asarray(load_image(grey))[1, 2].tolist() == [6, 6, 6]
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    assert np.asarray(load_image(rgba)).shape == (2, 2, 3)
    assert np.asarray(load_image(grey[:, :, None])).shape == (3, 4, 3)


def test_several_images_and_one_alone(photo_path, photo_bytes):
    assert len(load_images([photo_path, photo_bytes])) == 2
    assert len(load_images(photo_path)) == 1
    with pytest.raises(SpecDecodeError, match="no images given"):
        load_images([])


def truncated(photo_bytes: bytes) -> bytes:
    return photo_bytes[: len(photo_bytes) // 2]


def huge_header_bmp(side: int) -> bytes:
    """A 1x1 BMP whose header claims side x side pixels: opening reads the header only."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="BMP")
    data = bytearray(buffer.getvalue())
    data[18:26] = struct.pack("<ii", side, side)  # BITMAPINFOHEADER width, height
    return bytes(data)


@pytest.mark.parametrize("source, message", [
    (lambda tmp, photo: tmp / "missing.jpg", "no such image file"),
    (lambda tmp, photo: tmp, "a folder"),
    (lambda tmp, photo: b"just some text, not an image", "not an image pillow can read"),
    (lambda tmp, photo: truncated(photo), "truncated or damaged"),
    (lambda tmp, photo: huge_header_bmp(9000), "9000 x 9000 pixels, more than the 64,000,000 allowed"),
    (lambda tmp, photo: huge_header_bmp(100_000), "too large to decode safely.*resize it first"),  # pillow's own limit
    (lambda tmp, photo: np.zeros((0, 5, 3), dtype=np.uint8), "has no pixels"),
    (lambda tmp, photo: np.zeros((4, 4, 2), dtype=np.uint8), "channels"),
    (lambda tmp, photo: np.full((4, 4), 2.0), r"values in \[0, 1\]"),
    (lambda tmp, photo: np.zeros((4, 4), dtype=np.int64), "uint8 or float"),
    (lambda tmp, photo: Image.new("RGB", (0, 0)), "has no pixels"),
    (lambda tmp, photo: 42, "must be a path, a PIL image"),
])
def test_bad_images_get_one_clear_error(tmp_path, photo_bytes, source, message):
    with pytest.raises(SpecDecodeError, match=message):
        load_image(source(tmp_path, photo_bytes))


def test_a_truncated_file_names_the_file(tmp_path, photo_bytes):
    path = tmp_path / "half.jpg"
    path.write_bytes(truncated(photo_bytes))
    with pytest.raises(SpecDecodeError, match="half.jpg"):
        load_image(path)


def test_a_user_limit_on_pixels(photo_path):
    with pytest.raises(SpecDecodeError, match="512 x 600 pixels, more than the 1,000 allowed"):
        load_image(photo_path, max_pixels=1000)


def test_image_files_from_paths_folders_and_globs(tmp_path, photo_bytes):
    for name in ("b.jpg", "a.png", "notes.txt"):
        (tmp_path / name).write_bytes(photo_bytes)
    assert [p.name for p in image_files([tmp_path])] == ["a.png", "b.jpg"]  # images only, by name
    assert [p.name for p in image_files([str(tmp_path / "*.jpg"), tmp_path / "a.png"])] == ["b.jpg", "a.png"]
    with pytest.raises(SpecDecodeError, match="no file matches"):
        image_files([str(tmp_path / "*.gif")])
    with pytest.raises(SpecDecodeError, match="no such image file or folder"):
        image_files([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecDecodeError, match="holds no image files"):
        image_files([tmp_path / "empty"])
