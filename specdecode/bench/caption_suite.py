"""A captioning suite in Spec-Bench's question format, built from images that every install of specdecode
has and nobody here wrote: matplotlib's sample data (a photograph, an icon, a logo, an MRI slice, an
elevation map) and, where the system has it, Debian's logo in /usr/share/pixmaps.

Each question is one turn, a captioning instruction, with one image (`images`, relative to the suite's
file); the images are written next to the file as PNG (JPEG kept as is), with their source and sha256 in
the record, so the file's hash covers them. Category `captioning`.

    python -m specdecode.bench.caption_suite --out captioning/question.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SpecDecodeError
from .questions import write_questions
from ..files import write_atomic

CATEGORY = "captioning"


@dataclass(frozen=True)
class ImageSpec:
    """One image of the suite: `source` names where it comes from, `prompt` what is asked about it."""

    name: str
    source: str  # "matplotlib:<sample data file>" or an absolute path
    prompt: str


IMAGES = (
    ImageSpec("grace_hopper", "matplotlib:grace_hopper.jpg", "Describe this image in detail."),
    ImageSpec("present", "matplotlib:Minduka_Present_Blue_Pack.png", "Describe this image."),
    ImageSpec("logo", "matplotlib:logo2.png", "What does this image show? Describe its text, shapes and colours."),
    ImageSpec("mri", "matplotlib:s1045.ima.gz", "Describe this medical image for a radiology report."),
    ImageSpec("elevation", "matplotlib:jacksboro_fault_dem.npz", "Describe this image: what it might show, "
              "its brightness and its structure."),
    ImageSpec("debian", "/usr/share/pixmaps/debian-logo.png", "Write a caption for this image."),
)


def read_image(source: str):
    """The PIL image a source names (matplotlib's raw data files are rendered as greyscale)."""
    from matplotlib import cbook
    from PIL import Image

    if not source.startswith("matplotlib:"):
        return Image.open(source).convert("RGB")
    name = source.removeprefix("matplotlib:")
    if name.endswith(".ima.gz"):  # 256x256 16-bit MRI slice
        with cbook.get_sample_data(name) as file:
            raw = np.frombuffer(file.read(), np.uint16)  # get_sample_data decompresses
        return grey(raw.reshape(256, 256))
    if name.endswith(".npz"):  # an elevation model
        with cbook.get_sample_data(name) as data:
            return grey(np.asarray(data["elevation"], dtype=np.float64))
    with cbook.get_sample_data(name) as file:
        return Image.open(io.BytesIO(file.read())).convert("RGB")


def grey(values: np.ndarray):
    from PIL import Image

    low, high = float(values.min()), float(values.max())
    scaled = (values.astype(np.float64) - low) / max(high - low, 1e-12) * 255  # [h, w] in [0, 255]
    return Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")


def build(out: Path) -> list[dict]:
    """Write the suite to `out` and its images to `<out's folder>/images`; return the records."""
    folder = out.parent / "images"
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for number, spec in enumerate(IMAGES, start=1):
        if not spec.source.startswith("matplotlib:") and not Path(spec.source).is_file():
            continue  # a system image this machine lacks
        image = read_image(spec.source)
        path = folder / f"{spec.name}.png"
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        write_atomic(path, data)
        records.append({"question_id": number, "category": CATEGORY, "turns": [spec.prompt],
                        "images": [f"images/{path.name}"], "image_source": spec.source,
                        "image_sha256": hashlib.sha256(data).hexdigest(), "image_size": list(image.size)})
    write_questions(records, out)
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the question file to write (images go beside it)")
    args = parser.parse_args(argv)
    if args.out.suffix != ".jsonl":
        raise SpecDecodeError(f"--out must name a .jsonl file, got {args.out}.")
    records = build(args.out)
    print(f"{len(records)} captioning questions -> {args.out}")


if __name__ == "__main__":
    main()
