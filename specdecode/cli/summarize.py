"""The body of `specdecode summarize` (main.py imports this lazily): read the files, summarize them (in
parts when they do not fit one prompt), print the summary, a stats line, and with --compare plain vs
speculative decoding over every stage."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpecDecodeError

Write = Callable[[str], None]
WARMUP_DOCUMENT = "A short document to warm the model up before the timed runs."


@dataclass(frozen=True)
class SummarizeConfig:
    source: str | tuple[Path, ...]  # text (standard input) or the files, summarized together
    model: str
    drafter: str = "auto"  # "auto" (lookup+self) | a drafter name ("lookup", "none", ...)
    max_new_tokens: int = 256
    instruction: str | None = None  # None: the pipeline's default (a few paragraphs)
    split: bool = True
    max_prompt_tokens: int | None = None
    dtype: str = "auto"
    compare: bool = False
    stream: bool = False
    progress: bool = True


def run_summarize(config: SummarizeConfig, write: Write) -> None:
    from .generate import hide_loading_bars
    from ..models.load import load_model
    from ..pipelines import SummarizePipeline
    from ..pipelines.reading import read_source

    if config.max_new_tokens < 1:
        raise SpecDecodeError(f"--max-new-tokens must be >= 1, got {config.max_new_tokens}.")
    if config.max_prompt_tokens is not None and config.max_prompt_tokens < 1:
        raise SpecDecodeError(f"--max-prompt-tokens must be >= 1, got {config.max_prompt_tokens}.")
    if config.instruction is not None and not config.instruction.strip():
        raise SpecDecodeError("--instruction is empty; say what the summary should be, or leave the option out.")
    source = list(config.source) if isinstance(config.source, tuple) else config.source
    read_source(source)  # a file that cannot be read fails here, before a model is loaded
    hide_loading_bars()
    target = load_model(config.model, dtype=config.dtype)
    drafter = None if config.drafter.strip() == "none" else config.drafter
    options = {} if config.instruction is None else {"instruction": config.instruction}
    summarize = SummarizePipeline(target, drafter=drafter, max_new_tokens=config.max_new_tokens,
                                  max_prompt_tokens=config.max_prompt_tokens, split=config.split,
                                  progress=config.progress, **options)
    plain = None
    if config.compare:
        summarize.generator.generate(summarize.prompt(WARMUP_DOCUMENT), min(4, config.max_new_tokens))  # untimed
        plain = summarize(source, speculative=False)
        summary = summarize(source)
        write(summary.text.strip() + "\n")
    elif config.stream:
        pieces = summarize.stream(source)
        while True:
            try:
                write(next(pieces))
            except StopIteration as done:
                summary = done.value
                break
        write("\n")
    else:
        summary = summarize(source)
        write(summary.text.strip() + "\n")
    write("\n" + stats_line(summary) + "\n")
    for note in summary.notes:
        write(f"note: {note}\n")
    for name, counts in summary.stats.drafters.items():
        write(f"  drafter {name} (final stage): {counts['accepted']} of {counts['drafted']} drafted tokens "
              "accepted\n")
    if plain is not None:
        write("\n" + comparison_report(plain, summary) + "\n")


def stats_line(summary) -> str:
    """Parts, prompt tokens, prefill, decoding speed and tokens per target forward of a Summary."""
    s = summary.stats
    rate = f"{s.new_tokens / s.decode_s:.1f}" if s.decode_s > 0 else "-"
    stages = len(summary.stages)
    parts = "1 part: 1 stage" if stages == 1 else f"{summary.parts} parts + reduce: {stages} stages"
    reused = f" ({s.reused_prompt_tokens} prompt tokens reused)" if s.reused_prompt_tokens else ""
    return (f"[{parts}, {summary.prompt_tokens} prompt tokens, {summary.wall_s:.2f} s "
            f"in all; final stage: {s.new_tokens} tokens, prefill {s.prefill_s:.2f} s{reused}, decode {rate} tokens/s, "
            f"{s.mean_accepted:.2f} tokens per target forward]")


def comparison_report(plain, speculative) -> str:
    """Plain vs speculative decoding summed over every stage, the speedup, and whether every stage's
    token ids are identical (else where the first differing stage diverges, and why)."""
    from .generate import Comparison, divergence_notes

    def totals(summary) -> dict[str, float]:
        stats = [stage.stats for stage in summary.stages]
        return {name: sum(getattr(x, name) for x in stats)
                for name in ("new_tokens", "wall_s", "prefill_s", "decode_s", "steps", "reused_prompt_tokens")}

    p, s = totals(plain), totals(speculative)
    rows = [
        ("all stages", "plain", "speculative"),
        ("stages", str(len(plain.stages)), str(len(speculative.stages))),
        ("new tokens", str(p["new_tokens"]), str(s["new_tokens"])),
        ("prefill s", f"{p['prefill_s']:.2f}", f"{s['prefill_s']:.2f}"),
        ("prompt tokens reused", str(p["reused_prompt_tokens"]), str(s["reused_prompt_tokens"])),
        ("decode s", f"{p['decode_s']:.2f}", f"{s['decode_s']:.2f}"),
        ("decode tokens/s", _rate(p["new_tokens"], p["decode_s"]), _rate(s["new_tokens"], s["decode_s"])),
        ("wall s", f"{p['wall_s']:.2f}", f"{s['wall_s']:.2f}"),
        ("target forwards", str(p["steps"]), str(s["steps"])),
        ("tau", _rate(p["new_tokens"], p["steps"], 2), _rate(s["new_tokens"], s["steps"], 2)),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    if p["decode_s"] > 0 and s["decode_s"] > 0 and p["new_tokens"]:
        speedup = (s["new_tokens"] / s["decode_s"]) / (p["new_tokens"] / p["decode_s"])
        lines.append(f"speedup: {speedup:.2f}x decoding (tokens/s after the prefill)")
    if p["reused_prompt_tokens"] == s["reused_prompt_tokens"] and s["wall_s"] > 0:
        lines.append(f"wall time: {p['wall_s'] / s['wall_s']:.2f}x")
    elif p["decode_s"] > 0 and s["decode_s"] > 0:  # the speculative run reused the plain run's prefill
        total = p["prefill_s"] + s["decode_s"]
        lines.append(f"wall time: {p['wall_s'] / total:.2f}x with the plain run's prefill counted for both "
                     f"(the speculative run reused {s['reused_prompt_tokens']} prompt tokens' prefill)")
    pairs = list(zip(plain.stages, speculative.stages))
    differing = [(p, s) for p, s in pairs if p.token_ids != s.token_ids]
    if not differing and len(plain.stages) == len(speculative.stages):
        lines.append(f"identical token ids: yes (all {len(pairs)} stages)")
        return "\n".join(lines)
    lines.append("identical token ids: no")
    if differing:
        p, s = differing[0]
        lines.append(f"first differing stage: {p.name}")
        lines.extend(divergence_notes(Comparison(p.output, s.output, greedy=True)))
    else:
        lines.append(f"the stages differ in number: {len(plain.stages)} plain, {len(speculative.stages)} speculative")
    return "\n".join(lines)


def _rate(amount: float, per: float, digits: int = 1) -> str:
    return f"{amount / per:.{digits}f}" if per > 0 else "-"
