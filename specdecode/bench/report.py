"""The benchmark's reports: summary.json, report.md, speedup.png and acceptance.png (and
speedup_by_length.png where the categories are length buckets: lengths.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from ..files import atomic_file
from .lengths import PLOT_FILE, length_buckets, length_figure, length_lines
from .metrics import OVERALL, MethodSummary, summarize
from .results import ResultsFolder

HEADER = ("method", "questions", "speedup", "median speedup", "tau", "tokens/s", "identical", "decode speedup",
          "prefill share")


def write_reports(folder: ResultsFolder, methods: Sequence[str], environment: dict) -> dict:
    """Write every report from the folder's records; return the summary document."""
    order = list(dict.fromkeys([*methods, *(r["method"] for r in folder.records)]))
    table = summarize(folder.records, order)
    dtypes = sorted({r.get("dtype", "?") for r in folder.records})
    buckets = length_buckets(folder.records)
    document = {
        "settings": folder.settings,
        "environment": {**environment, "target_dtype": ", ".join(dtypes) or None},
        "methods": order,
        "summary": {category: [asdict(row) for row in rows] for category, rows in table.items()},
        "length_buckets": [asdict(b) for b in buckets],
        "divergences": [
            {"question_id": r["question_id"], "method": r["method"], **r["divergence"]}
            for r in folder.records if r.get("divergence")
        ],
    }
    folder.write_text("summary.json", json.dumps(document, indent=2))
    folder.write_text("report.md", markdown_report(document, table, length_lines(table, buckets) if buckets else []))
    if folder.records:
        plot_speedups(table, folder.path / "speedup.png")
        plot_acceptance(table.get(OVERALL, []), folder.path / "acceptance.png")
    if buckets:
        _save(length_figure(table, buckets), folder.path / PLOT_FILE)
    return document


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def table_lines(rows: Sequence[MethodSummary]) -> list[str]:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    for row in rows:
        cells = (row.method, str(row.questions), _fmt(row.speedup, "{:.2f}x"), _fmt(row.median_speedup, "{:.2f}x"),
                 _fmt(row.tau, "{:.2f}"), f"{row.tokens_per_s:.2f}", _fmt(row.identical, "{:.0%}"),
                 _fmt(row.decode_speedup, "{:.2f}x"), _fmt(row.prefill_share, "{:.0%}"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown_report(document: dict, table: dict[str, list[MethodSummary]], by_length: Sequence[str] = ()) -> str:
    settings, env = document["settings"], document["environment"]
    lines = [
        "# specdecode bench report",
        "",
        f"- model: `{settings['model']}` (dtype {settings['dtype']} → {env['target_dtype']}"
        f"{', weights ' + settings['quantize'] if settings.get('quantize') else ''}), "
        f"drafter dtype {settings['drafter_dtype']}"
        f"{', drafter weights ' + settings['drafter_quantize'] if settings.get('drafter_quantize') else ''}, "
        f"max_new_tokens {settings['max_new_tokens']}, "
        f"k {settings['k'] if settings['k'] is not None else 'adaptive'}, tree width {settings.get('tree_width', 1)}",
        f"- machine: {env['cpu']}; {env['cores']} cores, {env['torch_threads']} torch threads"
        + (f"; GPU {env['gpu']}" if env.get("gpu") else ""),
        f"- CPU flags: {', '.join(env['cpu_flags']) or 'none of interest'}",
        f"- python {env['python']}, torch {env['torch']}, transformers {env['transformers']}; reported {env['date']}"
        + (f" at commit {env['commit']}" if env.get("commit") else ""),
        "",
        "speedup = a method's mean tokens/s over the questions / plain's over the same questions; median "
        "speedup = median of the per-question ratios; tau = new tokens per target forward (bonus included); "
        "identical = token ids equal to plain decoding's; decode speedup = the speedup of the tokens/s after "
        "the prompt's prefill (ours: the target's forwards over the prompt and the drafter's start, the same "
        "target forwards for plain and speculative decoding, so they bound the speedup; HF peers: the first "
        "forward of the target, and of hf-assisted's assistant, timed by hooks inside the timed generate: "
        "the prompt, which also yields the first new token and verifies a first draft where there is one; "
        "llama.cpp: not measured); prefill share = the prefill's share of the method's seconds. Methods ran "
        "interleaved per question.",
        "",
        *by_length,
    ]
    for category, rows in table.items():
        lines += [f"## {category}", "", *table_lines(rows), ""]
    mixtures = [row for row in table.get(OVERALL, []) if row.drafters and len(row.drafters) > 1]
    if mixtures:
        lines += ["## per drafter, in mixtures", "",
                  "drafted = a drafter's tokens that made it into the verified tree; accepted = those the target kept "
                  "(a token proposed by two drafters counts for both); steps not run = steps the mixture did not "
                  "run the drafter (the others' drafts were likelier).", "",
                  "| method | drafter | drafted | accepted | acceptance | steps not run |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for row in mixtures:
            for name, counts in row.drafters.items():
                rate = counts["accepted"] / counts["drafted"] if counts["drafted"] else 0.0
                lines.append(f"| {row.method} | {name} | {counts['drafted']} | {counts['accepted']} | {rate:.0%} | "
                             f"{counts.get('skipped_steps', 0)} |")
        lines.append("")
    if document["divergences"]:
        lines += ["## outputs that differ from plain decoding", ""]
        for d in document["divergences"]:
            margin = "unknown" if d["plain_margin"] is None else f"{d['plain_margin']:.4f}"
            lines.append(f"- question {d['question_id']}, {d['method']}: turn {d['turn'] + 1}, token {d['position']} "
                         f"(plain {d['plain_token']}, this {d['token']}); plain's top-2 logit margin there {margin}")
        lines.append("")
    return "\n".join(lines)


def _save(figure, path: Path) -> None:
    """Write the figure atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_file(path) as file:
        figure.savefig(file, format=path.suffix.lstrip("."), dpi=120, bbox_inches="tight")
    plt.close(figure)


def plot_speedups(table: dict[str, list[MethodSummary]], path: Path) -> None:
    """Grouped bars: speedup over plain by category (and overall) for every method but plain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories = [c for c in table if c != OVERALL] + [OVERALL]
    methods = list(dict.fromkeys(r.method for rows in table.values() for r in rows if r.method != "plain"))
    figure, axes = plt.subplots(figsize=(max(6.0, 0.9 * len(categories) * max(1, len(methods)) / 2 + 2), 4.2))
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        values = []
        for category in categories:
            row = next((r for r in table[category] if r.method == method), None)
            values.append(row.speedup if row and row.speedup is not None else 0.0)
        axes.bar([c + (i - (len(methods) - 1) / 2) * width for c in range(len(categories))], values, width,
                 label=method)
    axes.axhline(1.0, color="black", linewidth=1, linestyle="--")
    axes.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
    axes.set_ylabel("speedup over plain decoding (x)")
    axes.set_title("speedup by category")
    if methods:
        axes.legend(fontsize=8)
    _save(figure, path)


def plot_acceptance(rows: Sequence[MethodSummary], path: Path) -> None:
    """Per method with drafts: the share of target forwards that accepted a = 0, 1, 2, ... draft tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drafted = [r for r in rows if r.method != "plain" and r.accept_histogram and len(r.accept_histogram) > 1]
    figure, axes = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(drafted))
    for i, row in enumerate(drafted):
        total = sum(row.accept_histogram)
        shares = [count / total for count in row.accept_histogram]
        axes.bar([a + (i - (len(drafted) - 1) / 2) * width for a in range(len(shares))], shares, width,
                 label=f"{row.method} (tau {row.tau:.2f})" if row.tau else row.method)
    axes.set_xlabel("draft tokens accepted in one target forward")
    axes.set_ylabel("share of target forwards")
    axes.set_title("acceptance lengths (our methods; peers do not expose theirs)")
    if drafted:
        axes.legend(fontsize=8)
    else:
        axes.text(0.5, 0.5, "no speculative method of ours in these results", ha="center", transform=axes.transAxes)
    _save(figure, path)
