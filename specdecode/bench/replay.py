"""Replay drafters against recorded greedy outputs through the engine's own loop, without the target.

Tuning a drafter or the draft policy needs many runs, and on a CPU the target's forwards are most of
each run. A replay records the target's greedy output once per question (plain decoding, kept in a
truth file), then runs each drafter through the real SpeculativeGenerator loop with the target's
forward replaced by `ReplayBackend`: the logits of a token fed at position p put all their mass on the
recorded token at p + 1, which is what the greedy target chooses there, so the same tokens are accepted
as in a real run. The clock (`ReplayClock`) is the real one, since the drafters run for real, plus the
target's measured cost of each forward that was not run (its ForwardCosts, calibrated on this machine
after a short context), so the draft policy sizes drafts as it would. The decode-phase speedups it
prints are predictions at the table's context; the benchmark measures.

    python -m specdecode.bench.replay -q question.jsonl -m qwen2.5-coder-1.5b-instruct \\
        --methods lookup,model:qwen2.5-coder-0.5b-instruct,lookup+model:qwen2.5-coder-0.5b-instruct

Self-drafters read the target's own KV cache, which a replay does not compute, and a vision-language drafter
the image, which a replay does not feed: both are refused. Text drafters replay image questions (captions) as
they run there: on the prompt's text.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..drafters.base import Drafter
from ..drafters.registry import DrafterOptions, drafter_kinds, make_drafter, parse_drafters
from ..engine import SpeculativeGenerator
from ..errors import SpecDecodeError
from ..models.load import LoadedModel, draft_quantization, load_model, output_vocab_size
from ..multimodal.vlm import is_vlm_spec
from ..outputs import GenerationOutput
from ..policy import SizerSettings
from ..prompts import EncodedPrompt
from ..runtime.calibrate import ForwardCosts
from ..runtime.machine import specdecode_home
from ..runtime.runner import SDPABackend
from .methods import DraftModels
from .questions import Question, read_questions, select_questions
from ..files import write_atomic
from .runner import encoded_turn, loader_for


class ReplayClock:
    """Real seconds plus the seconds charged for target forwards that were replayed instead of run."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.charged = 0.0

    def __call__(self) -> float:
        return self.clock() + self.charged


class ReplayBackend(SDPABackend):
    """The target's forward, replayed: the token fed at position p predicts `sequence[p + 1]` (one-hot
    logits), the cache grows by empty entries, and `clock` is charged `costs.raw(rows)` per decoding
    forward (a prefill costs nothing: the replay predicts the decode phase)."""

    name = "replay"

    def __init__(self, sequence: Sequence[int], vocab_size: int, costs: ForwardCosts, clock: ReplayClock):
        super().__init__(lean=False)
        self.sequence = list(sequence)  # prompt + recorded output
        self.vocab_size, self.costs, self.clock = vocab_size, costs, clock

    def forward(self, model, cache, input_ids, positions, tree_mask=None, logits_to_keep=0, hidden=False,
                prefill=False, model_inputs=None, pads=0):
        q = input_ids.shape[-1]
        empty = torch.zeros(1, 1, q, 1)  # [batch, heads, q, head_dim]: the cache only counts entries
        for layer in range(model.config.get_text_config().num_hidden_layers):
            cache.hf.update(empty, empty, layer)
        if prefill or hidden:
            return torch.zeros(q, 1)  # [q, 1]: nobody reads a prefill's hidden states
        self.clock.charged += self.costs.raw(q)
        following = [self.sequence[p + 1] if p + 1 < len(self.sequence) else 0 for p in positions.tolist()]
        logits = torch.zeros(q, self.vocab_size)  # [q, vocab]
        logits[torch.arange(q), torch.tensor(following)] = 1.0
        return logits[-logits_to_keep:] if logits_to_keep else logits


@dataclass(frozen=True)
class Recording:
    """The target's greedy output for one prompt."""

    key: str  # the question's key
    prompt_ids: tuple[int, ...]
    output_ids: tuple[int, ...]


def replay(target: LoadedModel, drafter: Drafter | None, recording: Recording, costs: ForwardCosts,
           padded: Sequence[int], *, draft_policy: SizerSettings = SizerSettings(),
           clock: Callable[[], float] = time.perf_counter) -> GenerationOutput:
    """One recorded generation replayed with `drafter` (None: plain decoding) through the engine's loop;
    `padded` is the verification padding table the real run would use."""
    replay_clock = ReplayClock(clock)
    backend = ReplayBackend(recording.prompt_ids + recording.output_ids, output_vocab_size(target.model), costs,
                            replay_clock)
    generator = SpeculativeGenerator(target, drafter, attention=backend, pad_verification=list(padded),
                                     cost_model=costs, draft_policy=draft_policy, clock=replay_clock)
    out = generator.generate(list(recording.prompt_ids), len(recording.output_ids), speculative=drafter is not None)
    if list(out.token_ids) != list(recording.output_ids):
        raise SpecDecodeError(f"question {recording.key}: the replay stopped before the recorded output's end (an "
                              "end-of-sequence token inside it): the truth file was recorded with another model or "
                              "tokenizer; delete it to record it again.")
    return out


# ----------------------------------------------------------------------------- truth files
def read_recordings(path: Path, model: str, max_new_tokens: int) -> dict[str, Recording]:
    """The recordings of `model` at `max_new_tokens` in a truth file (JSON lines), by question key."""
    if not path.is_file():
        return {}
    found = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
            if record["model"] == model and record["max_new_tokens"] == max_new_tokens:
                found[record["key"]] = Recording(record["key"], tuple(record["prompt_ids"]),
                                                 tuple(record["output_ids"]))
        except (ValueError, KeyError, TypeError):
            raise SpecDecodeError(f"{path} line {number} is not a recording; delete the file (or pass another "
                                  "--truth) to record the outputs again.") from None
    return found


def add_recording(path: Path, model: str, max_new_tokens: int, recording: Recording) -> None:
    """Append one recording to a truth file, atomically (a crash leaves the file as it was)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.is_file() else ""
    line = json.dumps({"key": recording.key, "model": model, "max_new_tokens": max_new_tokens,
                       "prompt_ids": list(recording.prompt_ids), "output_ids": list(recording.output_ids)})
    write_atomic(path, old + line + "\n")


def recordings_for(target: LoadedModel, questions: Sequence[Question], max_new_tokens: int, truth: Path,
                   record: Callable[[list[int] | EncodedPrompt], list[int]]) -> list[Recording]:
    """Each question's recording (its first turn), from the truth file or, where missing, by `record(prompt)`
    (the target's plain greedy decoding; an image question's prompt carries its images), then added to the file."""
    known = read_recordings(truth, target.name, max_new_tokens)
    recordings = []
    for question in questions:
        prompt = encoded_turn(target, question, [{"role": "user", "content": question.turns[0]}])
        prompt_ids = tuple(prompt.token_ids if isinstance(prompt, EncodedPrompt) else prompt)
        recording = known.get(question.key)
        if recording is None or recording.prompt_ids != prompt_ids:
            recording = Recording(question.key, prompt_ids, tuple(record(prompt)))
            add_recording(truth, target.name, max_new_tokens, recording)
        recordings.append(recording)
    return recordings


def parse_model_specs(method: str) -> list[str]:
    """The model specs named in a drafter name (`model:NAME` parts)."""
    return [part.model for part in parse_drafters(method) if part.kind == "model"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m specdecode.bench.replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("-q", "--questions", type=Path, required=True, help="a Spec-Bench question.jsonl (first turns)")
    parser.add_argument("-m", "--model", required=True, help="the target whose outputs are replayed")
    parser.add_argument("--methods", required=True, help="comma-separated drafter names (as `specdecode bench`)")
    parser.add_argument("--categories", help="comma-separated categories (default: all)")
    parser.add_argument("--limit-per-category", type=int)
    parser.add_argument("-n", "--max-new-tokens", type=int, default=128)
    parser.add_argument("-k", type=int, help="fixed draft depth (default: adaptive), as `specdecode bench -k`")
    parser.add_argument("--tree-width", type=int, default=1, help="model drafters: 1 = chains, w > 1 = top-w trees")
    parser.add_argument("--truth", type=Path, help="truth file (default: $SPECDECODE_HOME/replays/FOLDER-NAME.jsonl "
                                                   "for the questions FOLDER/NAME.jsonl)")
    args = parser.parse_args(argv)
    try:
        methods = args.methods.split(",")
        if any("self" in drafter_kinds(method) or is_vlm_spec(model)
               for method in methods for model in parse_model_specs(method)):
            raise SpecDecodeError("a replay runs neither self-drafters (they read the target's KV cache, which it "
                                  "does not compute) nor vision-language drafters (it feeds no image); benchmark "
                                  "them with `specdecode bench`.")
        categories = args.categories.split(",") if args.categories else None
        questions = select_questions(read_questions(args.questions), categories, args.limit_per_category)
        target = loader_for(questions)(args.model)
        plain = SpeculativeGenerator(target)
        truth = args.truth or specdecode_home() / "replays" / f"{args.questions.parent.name}-{args.questions.stem}.jsonl"
        recordings = recordings_for(target, questions, args.max_new_tokens, truth,
                                    lambda prompt: plain.generate(prompt, args.max_new_tokens).token_ids)
        real = SDPABackend()
        costs = plain.calibration.forward_costs(target.model, real)
        padded = real.padded_sizes(target.model, plain.calibration)
        models = DraftModels("fast-decode", load_model, draft_quantization(target.device))
        options = DrafterOptions(k=args.k, tree_width=args.tree_width)
        drafters = {"plain": None, **{name: make_drafter(name, target, options, models) for name in methods}}
    except SpecDecodeError as e:
        raise SystemExit(f"error: {e}") from None
    stats = {name: [] for name in drafters}
    for recording in recordings:  # methods interleaved per question
        for name, drafter in drafters.items():
            stats[name].append(replay(target, drafter, recording, costs, padded).stats)
    print(f"{len(recordings)} questions, {args.model}, truth {truth}; predicted decode phase (verify costs "
          f"{costs.table_ms()[1]:.1f} ms per one-token forward):")
    plain_rate = sum(s.new_tokens for s in stats["plain"]) / sum(s.decode_s for s in stats["plain"])
    for name, runs in stats.items():
        tokens, steps = sum(s.new_tokens for s in runs), sum(s.steps for s in runs)
        print(f"  {name:48s} {tokens / sum(s.decode_s for s in runs) / plain_rate:5.2f}x  {tokens / steps:5.2f} "
              f"tokens per step, {sum(s.drafted_tokens for s in runs) / steps:5.2f} drafted per step")


if __name__ == "__main__":
    main()
