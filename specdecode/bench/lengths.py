"""Reports over length buckets: categories named `<family>_<N>k` (bench/long_suite.py writes them,
`long_summarization_2k` ... `_16k`) get a table of speedups by prompt length and a plot of speedup
against prompt tokens, written beside the other reports only when a run has such categories."""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .metrics import MethodSummary

BUCKET = re.compile(r"^(?P<family>.+)_(?P<size>\d+(?:\.\d+)?)k$")
PLOT_FILE = "speedup_by_length.png"
FOOTNOTE = ("Each cell: speedup / decode speedup over plain decoding in that bucket (\"-\": not measured). "
            "Prompt tokens: the mean over the bucket's questions of the first turn's prompt, chat template "
            "included.")


@dataclass(frozen=True)
class LengthBucket:
    category: str
    family: str  # the category without its size: buckets of one family make one line on the plot
    nominal_tokens: int  # N x 1024 from the name
    prompt_tokens: float  # mean first-turn prompt tokens of its results (nominal_tokens where not recorded)


def length_buckets(records: Iterable[dict]) -> list[LengthBucket]:
    """The length-bucket categories among the records, by family then size."""
    prompts: dict[str, list[int]] = {}
    for r in records:
        if BUCKET.match(r["category"]):
            first = (r.get("prompt_tokens") or [None])[0]
            prompts.setdefault(r["category"], []).extend([first] if first is not None else [])
    buckets = []
    for category, counts in prompts.items():
        match = BUCKET.match(category)
        nominal = round(float(match["size"]) * 1024)
        buckets.append(LengthBucket(category, match["family"], nominal,
                                    statistics.fmean(counts) if counts else float(nominal)))
    return sorted(buckets, key=lambda b: (b.family, b.nominal_tokens))


def _cell(row: MethodSummary | None) -> str:
    if row is None:
        return ""
    speedup = "-" if row.speedup is None else f"{row.speedup:.2f}x"
    decode = "-" if row.decode_speedup is None else f"{row.decode_speedup:.2f}x"
    return f"{speedup} / {decode}"


def length_lines(table: dict[str, list[MethodSummary]], buckets: Sequence[LengthBucket]) -> list[str]:
    """The Markdown section: one row per method, one column per bucket."""
    methods = list(dict.fromkeys(r.method for b in buckets for r in table.get(b.category, [])))
    header = ["method", *(f"{b.category} ({b.prompt_tokens:,.0f} tokens)" for b in buckets)]
    lines = ["## speedup by prompt length", "", FOOTNOTE, "", "| " + " | ".join(header) + " |",
             "|" + " --- |" * len(header)]
    for method in methods:
        cells = [_cell(next((r for r in table.get(b.category, []) if r.method == method), None)) for b in buckets]
        lines.append("| " + " | ".join([method, *cells]) + " |")
    return [*lines, ""]


def length_figure(table: dict[str, list[MethodSummary]], buckets: Sequence[LengthBucket]):
    """A figure of two panels against prompt tokens (log scale): decode speedup and speedup, a line per
    method (and family, where there are several)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(b.family for b in buckets))
    methods = list(dict.fromkeys(r.method for b in buckets for r in table.get(b.category, []) if r.method != "plain"))
    figure, panels = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for axes, field, title in ((panels[0], "decode_speedup", "decode-phase speedup (after the prefill)"),
                               (panels[1], "speedup", "speedup (prefill included)")):
        for color, method in enumerate(methods):  # a method keeps its color in both panels
            for index, family in enumerate(families):
                points = []
                for b in (b for b in buckets if b.family == family):
                    row = next((r for r in table.get(b.category, []) if r.method == method), None)
                    if row is not None and getattr(row, field) is not None:
                        points.append((b.prompt_tokens, getattr(row, field)))
                if points:
                    label = method if len(families) == 1 else f"{method} ({family})"
                    axes.plot(*zip(*points), marker="o", linestyle=("-", "--", ":", "-.")[index % 4],
                              color=f"C{color % 10}", label=label)
        axes.axhline(1.0, color="black", linewidth=1, linestyle="--")
        axes.set_xscale("log", base=2)
        ticks = sorted({round(b.prompt_tokens) for b in buckets})
        axes.set_xticks(ticks, [f"{t:,}" for t in ticks])
        axes.minorticks_off()
        axes.set_xlabel("prompt tokens (bucket mean)")
        axes.set_title(title, fontsize=10)
    panels[0].set_ylabel("speedup over plain decoding (x)")
    if methods:
        panels[1].legend(fontsize=8)
    figure.suptitle(f"speedup by document length: {', '.join(families)}")
    return figure
