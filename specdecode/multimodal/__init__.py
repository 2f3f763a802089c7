"""Vision-language inputs: images in (pillow), for VLM targets and the caption pipeline."""

from .images import MAX_PIXELS, image_files, load_image, load_images

__all__ = ["MAX_PIXELS", "image_files", "load_image", "load_images"]
