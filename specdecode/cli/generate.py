"""The body of `specdecode generate`: build the target and drafter, generate, and print the text,
a stats line, a plain-vs-speculative comparison, or JSON.

cli.py imports this module inside the command, so `specdecode --help` never loads torch.
Every bad input raises a SpecDecodeError; the CLI prints it as `error: <message>`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..drafters.registry import DrafterOptions, make_drafter, parse_drafters
from ..engine import SpeculativeGenerator
from ..errors import SpecDecodeError
from ..models.load import LoadedModel, load_model
from ..outputs import Divergence, GenerationOutput, first_divergence
from ..runtime.cpu.quantize import check_mode
from ..sampling import SamplingParams

NEAR_TIE = 0.1  # a top-2 logit margin below this at a divergence is a floating-point near-tie
WARMUP_TOKENS = 4  # the untimed generation before a comparison, so no timing includes a cold start
Write = Callable[[str], None]


@dataclass(frozen=True)
class GenerateConfig:
    """Everything `specdecode generate` was asked to do."""

    model: str
    drafter: str = "lookup"
    k: int | None = None  # None: adaptive draft length
    tree_width: int = 1  # of our drafters' trees; 1 = a chain
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    dtype: str = "auto"
    quantize: str | None = None  # "int8" | "int4" | "fp16" | "w8a8" target (quantize.py)
    drafter_dtype: str = "fast-decode"  # drafts never change the output, so the drafter may use its own
    drafter_quantize: str | None = "auto"  # a model drafter's weights: auto (measured fastest) | w8a8 | ... | None
    raw: bool = False  # tokenise the prompt as is, no chat template
    cost_model: bool = True  # size drafts with the measured cost model (policy.py)
    attention: str = "auto"  # the target's and a model drafter's attention backend (runtime.runner.select_backend)
    compare: bool = False
    stream: bool = True
    as_json: bool = False

    def options(self) -> dict:
        """The generation options shared by every run (plain, speculative, warm-up)."""
        return dict(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed,
                    stop=list(self.stop))

    def drafter_label(self) -> str:
        if self.drafter.strip() == "none":
            return "none"
        k = self.k if self.k is not None else "adaptive"
        return f"{self.drafter.strip()} (k={k}, tree_width={self.tree_width})"


@dataclass(frozen=True)
class Comparison:
    """Plain and speculative decoding of one prompt with one loaded target."""

    plain: GenerationOutput
    speculative: GenerationOutput
    greedy: bool

    @property
    def identical(self) -> bool:
        return self.plain.token_ids == self.speculative.token_ids

    @property
    def speedup(self) -> float | None:
        """Plain wall time / speculative wall time (a speedup for the same tokens when identical)."""
        spec_wall = self.speculative.stats.wall_s
        return self.plain.stats.wall_s / spec_wall if spec_wall > 0 else None

    @property
    def rate_ratio(self) -> float | None:
        """Speculative tokens/s / plain tokens/s."""
        plain_rate = self.plain.stats.tokens_per_s
        return self.speculative.stats.tokens_per_s / plain_rate if plain_rate > 0 else None

    @property
    def divergence(self) -> Divergence | None:
        return first_divergence(self.plain, self.speculative)


# ----------------------------------------------------------------------------- the command


def run_generate(config: GenerateConfig, prompt_text: str, out: Write, err: Write) -> None:
    """Run `specdecode generate`: results on `out`, the stats line on `err`."""
    plain = parse_drafters(config.drafter)[0].kind == "none"
    options = check_config(config, plain)
    hide_loading_bars()
    target = load_model(config.model, dtype=config.dtype, quantize=config.quantize)
    gen = SpeculativeGenerator(target, drafter=make_drafter(config.drafter, target, options),
                               cost_model="auto" if config.cost_model else None, attention=config.attention)
    prompt = format_prompt(target.tokenizer, prompt_text, raw=config.raw)

    if config.compare:
        err(f"[comparing on {target.name} ({str(target.dtype).removeprefix('torch.')}): a warm-up, plain "
            f"decoding, then speculative decoding with {config.drafter_label()}]\n")
        comparison = compare_runs(gen, prompt, config)
        if config.as_json:
            out(json.dumps(comparison_dict(comparison, target, config), indent=2) + "\n")
        else:
            out(comparison.speculative.text + "\n\n" + comparison_report(comparison) + "\n")
        return
    if config.as_json:
        result = gen.generate(prompt, config.max_new_tokens, **config.options())
        document = {"model": target.name, "drafter": config.drafter_label(), **output_dict(result)}
        out(json.dumps(document, indent=2) + "\n")
        return
    if config.stream:
        result = stream_text(gen, prompt, config, out)
        out("\n")
    else:
        result = gen.generate(prompt, config.max_new_tokens, **config.options())
        out(result.text + "\n")
    err(stats_line(result, config) + "\n")


def check_config(config: GenerateConfig, plain: bool) -> DrafterOptions:
    """Fail on bad options before any model is loaded; return the drafter's options."""
    if config.max_new_tokens < 1:
        raise SpecDecodeError(f"--max-new-tokens must be >= 1, got {config.max_new_tokens}.")
    SamplingParams(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k)  # raises if bad
    check_mode(config.quantize)
    check_mode(config.drafter_quantize, drafter=True)
    if plain:
        if config.k is not None or config.tree_width != 1:
            raise SpecDecodeError("--k and --tree-width shape a drafter's drafts; --drafter none decodes plainly.")
        if config.compare:
            raise SpecDecodeError(
                "--compare compares plain decoding with a drafter; pass --drafter lookup or --drafter model:NAME."
            )
    try:
        return DrafterOptions(k=config.k, tree_width=config.tree_width, drafter_dtype=config.drafter_dtype,
                              drafter_quantize=config.drafter_quantize, attention=config.attention)
    except SpecDecodeError as e:
        raise SpecDecodeError(f"--{e}") from None


def hide_loading_bars() -> None:
    """Converted models load in about a second: transformers' per-load progress bars are only noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def format_prompt(tokenizer, text: str, *, raw: bool):
    """One user chat message when the tokenizer has a chat template (unless raw), else the text."""
    if raw or not text.strip() or not getattr(tokenizer, "chat_template", None):
        return text  # an empty prompt goes on as text, so the engine names the problem
    return [{"role": "user", "content": text.strip()}]


def stream_text(gen: SpeculativeGenerator, prompt, config: GenerateConfig, out: Write) -> GenerationOutput:
    """Print pieces as they come; return the GenerationOutput (the stream's return value)."""
    pieces = gen.stream(prompt, config.max_new_tokens, **config.options())
    while True:
        try:
            out(next(pieces))
        except StopIteration as finished:
            return finished.value


def compare_runs(gen: SpeculativeGenerator, prompt, config: GenerateConfig) -> Comparison:
    """An untimed warm-up, then plain decoding, then speculative decoding, same target and options."""
    options = config.options()
    gen.generate(prompt, min(WARMUP_TOKENS, config.max_new_tokens), **options)
    plain = gen.generate(prompt, config.max_new_tokens, speculative=False, **options)
    speculative = gen.generate(prompt, config.max_new_tokens, speculative=True, **options)
    return Comparison(plain, speculative, greedy=config.temperature == 0)


# ----------------------------------------------------------------------------- reports


def stats_line(result: GenerationOutput, config: GenerateConfig) -> str:
    s = result.stats
    return (
        f"[{s.new_tokens} tokens in {s.wall_s:.2f} s, {s.tokens_per_s:.1f} tokens/s, tau {s.mean_accepted:.2f} "
        f"over {s.steps} target forwards, drafter {config.drafter_label()}, stop: {result.stop_reason}]"
    )


def comparison_report(c: Comparison) -> str:
    """A small table (plain vs speculative), the speedup, the acceptance histogram and exactness."""
    p, s = c.plain.stats, c.speculative.stats
    rows = [
        ("", "plain", "speculative"),
        ("new tokens", str(p.new_tokens), str(s.new_tokens)),
        ("wall s", f"{p.wall_s:.2f}", f"{s.wall_s:.2f}"),
        ("tokens/s", f"{p.tokens_per_s:.1f}", f"{s.tokens_per_s:.1f}"),
        ("target forwards", str(p.steps), str(s.steps)),
        ("tau", f"{p.mean_accepted:.2f}", f"{s.mean_accepted:.2f}"),
        ("draft acceptance", "-", f"{s.acceptance_rate:.0%} of {s.drafted_tokens}"),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    same_count = p.new_tokens == s.new_tokens
    lines.append(
        f"speedup: {_ratio(c.speedup)} wall time ({'same' if same_count else 'different'} token count), "
        f"{_ratio(c.rate_ratio)} tokens/s"
    )
    histogram = " ".join(f"{a}:{n}" for a, n in enumerate(s.accept_histogram) if n)
    lines.append(f"draft tokens accepted per step (accepted:steps): {histogram or '-'}")
    lines.append(f"identical token ids: {'yes' if c.identical else 'no'}")
    if not c.identical:
        lines.extend(divergence_notes(c))
    return "\n".join(lines)


def divergence_notes(c: Comparison) -> list[str]:
    """Why the outputs differ: sampling, a floating-point near-tie, or a bug."""
    if not c.greedy:
        return ["(sampling: speculative decoding matches plain decoding in distribution, not token for token)"]
    d = c.divergence
    notes = [d.describe()]
    tie = near_tie(d)
    if tie is None:
        notes.append("the plain run's margin there is unknown")
    elif tie:
        notes.append(f"margin < {NEAR_TIE}: a floating-point near-tie (expected in bf16, where multi-token and "
                     "single-token forwards round differently); try --dtype fp32 for token-exact output")
    else:
        notes.append(f"margin >= {NEAR_TIE}: not a near-tie; this is a bug in specdecode, please report it "
                     "with this command line")
    return notes


def near_tie(d: Divergence | None) -> bool | None:
    if d is None or d.reference_margin is None:
        return None
    return d.reference_margin < NEAR_TIE


def output_dict(result: GenerationOutput) -> dict:
    return {"text": result.text, "token_ids": list(result.token_ids), "prompt_tokens": len(result.prompt_ids),
            "stop_reason": result.stop_reason, "stats": asdict(result.stats)}


def comparison_dict(c: Comparison, target: LoadedModel, config: GenerateConfig) -> dict:
    d = c.divergence
    divergence = None if d is None else {**asdict(d), "near_tie": near_tie(d) if c.greedy else None}
    return {
        "model": target.name,
        "drafter": config.drafter_label(),
        "text": c.speculative.text,
        "plain": output_dict(c.plain),
        "speculative": output_dict(c.speculative),
        "speedup": c.speedup,
        "tokens_per_s_ratio": c.rate_ratio,
        "identical": c.identical,
        "divergence": divergence,
    }


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"
