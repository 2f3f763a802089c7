"""Vision-language: VLM targets with their processor (vlm.py), images in (images.py)."""

from .images import MAX_PIXELS, image_files, load_image, load_images, names_several
from .vlm import SUPPORTED, ImagePrompts, load_vlm

__all__ = ["MAX_PIXELS", "SUPPORTED", "ImagePrompts", "image_files", "load_image", "load_images", "load_vlm", "names_several"]
