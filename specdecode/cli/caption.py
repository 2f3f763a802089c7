"""The body of `specdecode caption` (main.py imports this lazily): caption images with a VLM, print each
caption with a stats line, optionally write them to JSONL/CSV, and with --compare plain vs speculative."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import SpecDecodeError

Write = Callable[[str], None]


@dataclass(frozen=True)
class CaptionConfig:
    images: tuple[str, ...]  # files, folders or globs
    model: str  # what sd.load_vlm takes: a folder or a hub id
    drafter: str = "auto"  # "auto" (lookup, + a zoo text drafter of the VLM's vocabulary) | "none" | a drafter name
    prompt: str | None = None  # None: the pipeline's default question
    max_new_tokens: int = 128
    dtype: str = "auto"
    out: str | None = None  # a .jsonl or .csv file
    compare: bool = False
    progress: bool = True


def run_caption(config: CaptionConfig, write: Write) -> None:
    from .generate import hide_loading_bars
    from ..multimodal import load_vlm
    from ..pipelines.caption import CaptionPipeline, named_images, write_captions

    if config.max_new_tokens < 1:
        raise SpecDecodeError(f"--max-new-tokens must be >= 1, got {config.max_new_tokens}.")
    if config.out is not None and not config.out.lower().endswith((".jsonl", ".csv")):
        raise SpecDecodeError(f"--out must name a .jsonl or a .csv file, got {config.out!r}.")
    named = named_images(list(config.images))  # a missing file fails here, before a model is loaded
    hide_loading_bars()
    vlm = load_vlm(config.model, dtype=config.dtype)
    drafter = None if config.drafter.strip() == "none" else config.drafter
    options = {} if config.prompt is None else {"prompt": config.prompt}
    captions = CaptionPipeline(vlm, drafter=drafter, max_new_tokens=config.max_new_tokens, progress=config.progress,
                               **options)
    paths = [path for _, path in named]
    if not config.compare:
        results = captions(paths)
    else:  # per image, speculative then plain, side by side, after an untimed warm-up
        captions(paths[:1], max_new_tokens=min(4, config.max_new_tokens), progress=False)
        pairs = [(captions([path], progress=False)[0], captions([path], progress=False, speculative=False)[0])
                 for path in paths]
        results = [speculative for speculative, _ in pairs]
    for index, caption in enumerate(results):
        s = caption.stats
        write(f"{caption.image}: {caption.text}\n")
        write(f"  [{s.new_tokens} tokens in {s.wall_s:.2f} s, {s.mean_accepted:.2f} tokens per target forward]\n")
        if config.compare:
            plain = pairs[index][1]
            speedup = f"{plain.stats.wall_s / s.wall_s:.2f}x" if s.wall_s > 0 else "n/a"
            same = "yes" if plain.token_ids == caption.token_ids else "no"
            write(f"  plain: {plain.stats.wall_s:.2f} s; speedup {speedup}; identical token ids: {same}\n")
    if config.out is not None:
        write(f"wrote {len(results)} captions to {write_captions(results, config.out)}\n")
