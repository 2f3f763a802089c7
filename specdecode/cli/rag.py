"""The bodies of `specdecode index build|info` and `specdecode ask` (cli.py imports this lazily)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpecDecodeError

Write = Callable[[str], None]


def run_index_build(paths: list[str], out: Path, *, embedder: str | None, chunk_tokens: int, overlap: int,
                    index: str, nlist: int | None, progress: bool, write: Write) -> None:
    from ..retrieval import Datastore

    if not paths:
        raise SpecDecodeError("give at least one file or folder to index.")
    store = Datastore.build(list(map(Path, paths)), embedder=embedder, chunk_tokens=chunk_tokens, overlap=overlap,
                            index=index, nlist=nlist, path=out, progress=progress)
    sources = len({r["source"] for r in store.records})
    write(f"indexed {len(store)} passages from {sources} files into {out} "
          f"({store.settings.index} index, embedder {store.settings.embedder})\n")
    if store.skipped:
        write(f"skipped {len(store.skipped)} files:\n")
        for skipped in store.skipped[:20]:
            write(f"  {skipped.source}: {skipped.reason}\n")
        if len(store.skipped) > 20:
            write(f"  ... and {len(store.skipped) - 20} more\n")


def run_index_info(store_path: Path, write: Write) -> None:
    from ..retrieval.datastore import read_manifest

    manifest = read_manifest(store_path)
    write(f"store: {store_path}\n")
    for key in ("count", "embedder", "dimension", "index", "metric", "chunk_tokens", "overlap", "nlist", "nprobe",
                "format"):
        write(f"  {key}: {manifest.get(key)}\n")
    for role, entry in manifest["files"].items():
        size = (store_path / entry["name"]).stat().st_size if (store_path / entry["name"]).exists() else None
        write(f"  {role} file: {entry['name']} ({'missing' if size is None else f'{size:,} bytes'})\n")


@dataclass(frozen=True)
class AskConfig:
    store: Path
    model: str
    question: str
    drafter: str = "auto"  # "auto" | a drafter name ("retrieval+model:NAME", "lookup", "none")
    draft_model: str | None = None  # with "auto": merge a ModelDrafter of this model
    k: int = 4
    max_new_tokens: int = 256
    dtype: str = "auto"
    compare: bool = False


def run_ask(config: AskConfig, write: Write) -> None:
    from .generate import comparison_report, hide_loading_bars
    from .generate import Comparison
    from ..models.load import load_model
    from ..pipelines import RAGPipeline
    from ..retrieval import Datastore

    if config.k < 1:
        raise SpecDecodeError(f"--k must be >= 1, got {config.k}.")
    if config.max_new_tokens < 1:
        raise SpecDecodeError(f"--max-new-tokens must be >= 1, got {config.max_new_tokens}.")
    if not config.question.strip():
        raise SpecDecodeError("the question is empty; ask something.")
    store = Datastore.load(config.store)
    hide_loading_bars()
    target = load_model(config.model, dtype=config.dtype)
    drafter = None if config.drafter == "none" else config.drafter
    rag = RAGPipeline(target, store, drafter=drafter, k=config.k, draft_model=config.draft_model,
                      max_new_tokens=config.max_new_tokens)
    if config.compare:
        rag(config.question, max_new_tokens=min(4, config.max_new_tokens))  # untimed warm-up
        plain = rag(config.question, speculative=False)
        answer = rag(config.question)
        comparison = Comparison(plain.output, answer.output, greedy=True)
    else:
        answer = rag(config.question)
    write(answer.text.strip() + "\n\nsources:\n")
    for number, passage in enumerate(answer.sources, start=1):
        write(f"  [{number}] {passage.source} (chunk {passage.chunk}, chars {passage.start}-{passage.end}, "
              f"score {passage.score:.3f})\n")
    for note in answer.notes:
        write(f"note: {note}\n")
    stats = answer.stats
    write(f"\n[{stats.new_tokens} tokens in {stats.wall_s:.2f} s, {stats.tokens_per_s:.1f} tokens/s, "
          f"tau {stats.mean_accepted:.2f}]\n")
    for name, counts in stats.drafters.items():
        skipped = f" (not run on {counts['skipped_steps']} steps: others' drafts were likelier)" \
            if counts.get("skipped_steps") else ""
        write(f"  drafter {name}: {counts['accepted']} of {counts['drafted']} drafted tokens accepted{skipped}\n")
    if config.compare:
        write("\n" + comparison_report(comparison) + "\n")
