"""CaptionPipeline: caption images with a vision-language model, faster, with plain decoding's tokens.

    captions = CaptionPipeline(sd.load_vlm("path/to/llava"))
    caption = captions("photo.jpg", max_new_tokens=64)          # one image: one Caption
    for c in captions("holiday/"):                              # a folder, a glob or a list: a list
        print(c.image, c.text)
    write_captions(captions(["a.jpg", "b.png"]), "captions.jsonl")  # or .csv

Each image is one generation (`{"images": [image], "prompt": prompt}`); the results carry the caption,
its token ids and the generation's stats. A bad image fails the call with one SpecDecodeError before any
later image is captioned, and nothing is written.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..drafters import Drafter
from ..drafters.registry import DrafterOptions, make_drafter
from ..engine import SpeculativeGenerator
from ..errors import SpecDecodeError
from ..files import write_atomic
from ..multimodal import image_files, load_vlm, names_several
from ..multimodal.vlm import DEFAULT_PROMPT, load_drafter_model
from ..outputs import GenerationOutput, GenerationStats
from .base import ZOO_TEXT_DRAFTERS, local_drafter_model



@dataclass(frozen=True)
class Caption:
    image: str  # the file's path, or "image N" for an image given in memory
    text: str
    token_ids: list[int]
    stats: GenerationStats
    output: GenerationOutput


def auto_drafter(vlm, candidates: Sequence[str] = ZOO_TEXT_DRAFTERS) -> str:
    """What "auto" drafts a VLM's captions with: lookup on the prompt and the caption so far, merged with the
    first of `candidates` on this machine that shares the VLM's vocabulary (local_drafter_model: the zoo's
    Qwen2.5 0.5B for Qwen-VL targets, docs/benchmarks.md, captioning); lookup alone where none does."""
    model = local_drafter_model(vlm, candidates)
    return f"lookup+model:{model}" if model else "lookup"


class CaptionPipeline:
    """Caption images with speculative decoding.

    vlm: a LoadedModel from `sd.load_vlm`, or what load_vlm takes. drafter: "auto" (auto_drafter), a drafter name
    ("lookup", "model:NAME" for a text-only LM of the same tokenizer or a VLM of the target's family, ...), a
    Drafter, or None for plain decoding. prompt: what is asked of each image. progress: a progress bar over several images."""

    def __init__(self, vlm, *, drafter: str | Drafter | None = "auto", prompt: str = DEFAULT_PROMPT,
                 max_new_tokens: int = 128, progress: bool = True, cost_model="auto"):
        if not isinstance(prompt, str) or not prompt.strip():
            raise SpecDecodeError(f"the caption prompt is empty; ask something, e.g. {DEFAULT_PROMPT!r}.")
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise SpecDecodeError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}.")
        self.target = load_vlm(vlm)
        if drafter == "auto":
            drafter = auto_drafter(self.target)
        if isinstance(drafter, str):
            drafter = make_drafter(drafter, self.target, DrafterOptions(), load_drafter_model)
        self.generator = SpeculativeGenerator(self.target, drafter=drafter, cost_model=cost_model)
        self.prompt, self.max_new_tokens, self.progress = prompt, max_new_tokens, progress

    def __call__(self, images, **options) -> Caption | list[Caption]:
        """Caption one image (a path, a PIL image, bytes, a numpy array: one Caption) or several (a list, a
        folder, a glob: a list). Options: prompt, max_new_tokens, progress, and those of generate
        (speculative=False for plain decoding, temperature, seed, ...)."""
        single = not isinstance(images, (list, tuple)) and not names_several(images)
        named = named_images(images)
        prompt = options.pop("prompt", self.prompt)
        max_new = options.pop("max_new_tokens", self.max_new_tokens)
        progress = options.pop("progress", self.progress) and len(named) > 1
        captions = []
        bar = _bar(len(named)) if progress else None
        try:
            for name, image in named:
                output = self.generator.generate({"images": [image], "prompt": prompt}, max_new, **options)
                captions.append(Caption(name, output.text.strip(), output.token_ids, output.stats, output))
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return captions[0] if single else captions


def named_images(images) -> list[tuple[str, Any]]:
    """(name, image) for each image: paths, folders and globs expanded to their image files (by name)."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise SpecDecodeError("no images given: pass an image, a list of images, a folder or a glob.")
    named: list[tuple[str, Any]] = []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            named.extend((str(path), path) for path in image_files([item]))
        else:
            named.append((f"image {len(named) + 1}", item))
    return named


def write_captions(captions: Caption | Sequence[Caption], path: str | os.PathLike) -> Path:
    """Write captions to a .jsonl file (one record per image) or a .csv file (image, caption, new tokens,
    seconds), whole or not at all (a temporary file renamed into place)."""
    captions = [captions] if isinstance(captions, Caption) else list(captions)
    path = Path(path).expanduser()
    rows = [{"image": c.image, "caption": c.text, "new_tokens": c.stats.new_tokens,
             "wall_s": round(c.stats.wall_s, 3), "mean_accepted": round(c.stats.mean_accepted, 3)} for c in captions]
    if path.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    elif path.suffix.lower() == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    else:
        raise SpecDecodeError(f"captions are written to a .jsonl or a .csv file, not {path.name!r}.")
    if not path.parent.is_dir():
        raise SpecDecodeError(f"the folder {path.parent} does not exist; create it or choose another --out.")
    write_atomic(path, text)
    return path


def _bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="captions", unit="image")
