"""Images in: a path, a PIL image, encoded bytes or a numpy array, decoded whole and checked, as RGB.

A VLM's processor takes PIL images. Everything a user may hand over becomes one here, decoded at once
(a truncated file fails now, with its name, not inside the processor), and every problem gets one
`SpecDecodeError` naming the image and the fix: no such file, not an image, truncated, zero-sized, or
larger than `max_pixels` (checked from the header, before decoding, so a decompression bomb costs nothing).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import SpecDecodeError

MAX_PIXELS = 64_000_000  # 8000 x 8000: far above what any VLM's processor keeps, far below a decompression bomb
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm",
                  ".xpm", ".ico")  # what pillow reads; a folder's other files are not images


def load_image(source: Any, *, max_pixels: int = MAX_PIXELS):
    """One image as an RGB PIL image, fully decoded: `source` is a path (str or Path), a PIL image, encoded
    bytes (JPEG, PNG, ...) or a numpy array [height, width] or [height, width, 3 or 4] of uint8 (or floats in
    [0, 1])."""
    Image = _pillow()
    if isinstance(source, Image.Image):
        return _checked(source, "the PIL image", max_pixels).convert("RGB")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decoded(io.BytesIO(bytes(source)), f"the {len(source)} bytes given", max_pixels)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise SpecDecodeError(f"no such image file: {path}" + (" (a folder: pass its images, or a glob)"
                                                                  if path.is_dir() else "") + ".")
        with open(path, "rb") as file:
            return _decoded(file, str(path), max_pixels)
    if type(source).__module__ == "numpy" and hasattr(source, "shape"):
        return _from_array(source, max_pixels)
    raise SpecDecodeError(f"an image must be a path, a PIL image, encoded bytes or a numpy array; got "
                          f"{type(source).__name__}.")


def load_images(sources: Any, *, max_pixels: int = MAX_PIXELS) -> list:
    """Several images (a list or tuple of anything `load_image` takes; one source alone gives a list of one)."""
    if isinstance(sources, (list, tuple)):
        if not sources:
            raise SpecDecodeError("no images given: pass at least one image.")
        return [load_image(source, max_pixels=max_pixels) for source in sources]
    return [load_image(sources, max_pixels=max_pixels)]


def names_several(source: Any) -> bool:
    """Whether a path-like source names several images (a folder or a glob pattern), not one file."""
    if not isinstance(source, (str, os.PathLike)):
        return False
    return _is_glob(str(source)) or Path(source).expanduser().is_dir()


def _is_glob(text: str) -> bool:
    return any(char in text for char in "*?[")


def image_files(sources: Iterable[str | os.PathLike]) -> list[Path]:
    """The image files named by paths, folders (their images, sorted by name) and glob patterns, in order."""
    found: list[Path] = []
    for source in sources:
        text = str(source)
        if _is_glob(text):
            base = Path(text).expanduser()
            anchor = Path(base.anchor) if base.is_absolute() else Path(".")
            pattern = str(base.relative_to(anchor)) if base.is_absolute() else text
            matches = sorted(p for p in anchor.glob(pattern) if p.is_file())
            if not matches:
                raise SpecDecodeError(f"no file matches {text!r}; check the pattern.")
            found.extend(matches)
            continue
        path = Path(text).expanduser()
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise SpecDecodeError(f"the folder {path} holds no image files ({', '.join(IMAGE_SUFFIXES[:6])}, ...).")
            found.extend(images)
        elif path.is_file():
            found.append(path)
        else:
            raise SpecDecodeError(f"no such image file or folder: {path}.")
    return found


def _decoded(file, name: str, max_pixels: int):
    Image = _pillow()
    try:
        image = Image.open(file)
    except Image.DecompressionBombError as e:
        raise SpecDecodeError(f"{name} is too large to decode safely ({e}); resize it first.") from e
    except (Image.UnidentifiedImageError, OSError) as e:
        raise SpecDecodeError(f"{name} is not an image pillow can read (JPEG, PNG, GIF, BMP, WebP, TIFF, ...); "
                              "check the file.") from e
    _checked(image, name, max_pixels)  # from the header: nothing decoded yet
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise SpecDecodeError(f"{name} could not be decoded whole ({e}): the file is truncated or damaged; "
                              "check the file.") from e
    return image.convert("RGB")


def _checked(image, name: str, max_pixels: int):
    width, height = image.size
    if width <= 0 or height <= 0:
        raise SpecDecodeError(f"{name} has no pixels ({width} x {height}); pass an image with some.")
    if width * height > max_pixels:
        raise SpecDecodeError(f"{name} is {width} x {height} pixels, more than the {max_pixels:,} allowed; resize "
                              "it first (a VLM's processor shrinks it anyway) or raise max_pixels.")
    return image


def _from_array(array, max_pixels: int):
    import numpy as np

    Image = _pillow()
    shape = tuple(array.shape)
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)):
        raise SpecDecodeError(f"an image array must be [height, width] or [height, width, 1, 3 or 4 channels]; "
                              f"got shape {shape}.")
    if 0 in shape[:2]:
        raise SpecDecodeError(f"the image array has no pixels (shape {shape}); pass an image with some.")
    if shape[0] * shape[1] > max_pixels:
        raise SpecDecodeError(f"the image array is {shape[1]} x {shape[0]} pixels, more than the {max_pixels:,} "
                              "allowed; resize it first or raise max_pixels.")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise SpecDecodeError("a float image array must hold values in [0, 1]; scale it, or pass uint8.")
        array = np.round(array * 255)
    elif array.dtype != np.uint8:
        raise SpecDecodeError(f"an image array must be uint8 or float in [0, 1]; got {array.dtype}.")
    pixels = np.ascontiguousarray(array.astype(np.uint8))
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    return Image.fromarray(pixels).convert("RGB")


def _pillow():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - pillow comes with matplotlib
        raise SpecDecodeError("images need pillow: pip install 'specdecode[vision]'.") from e
    return Image
