"""Replay the greedy answers of a bench run through drafters and the cost model, without the target.

    python scripts/replay_drafts.py docs/benchmarks/pydoc-rag --questions docs/benchmarks/pydoc-questions.jsonl \
        --store ~/.cache/specdecode/stores/python-docs --drafters retrieval,model,retrieval+model

Under greedy decoding the committed tokens are plain decoding's (the `plain` rows of results.jsonl), so a
drafter's acceptance at every step can be computed without running the target: the engine's loop is
replayed (the cost model's budget, the drafter's tree, the longest accepted path, the drafter's update)
and each step costs the target's measured forward time for its size (the cost model's cache, the
same numbers the engine uses) plus the drafter's time. `model` is replayed from one teacher-forced
forward of the drafter model over prompt + answer: its greedy chain at a step is its argmax at each
position as long as its earlier tokens were right (beyond the first wrong token nothing can be accepted),
each drafted token costing `--draft-ms`. The result is the decoding speedup only (prefill excluded),
a prediction to choose what to benchmark, not a measurement.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from specdecode import load_model
from specdecode.bench import TurnResult, read_questions
from specdecode.bench.methods import MethodName
from specdecode.bench.runner import BenchConfig, rag_setup, run_turns
from specdecode.costs import DraftSizer, forward_costs
from specdecode.drafters import LookupDrafter, MixtureDrafter, RetrievalDrafter
from specdecode.drafters.base import AdaptiveLength, Drafter
from specdecode.drafters.registry import DrafterOptions
from specdecode.pipelines.rag import hand_passages
from specdecode.tree import DraftTree


UNKNOWN = 2**31 - 1  # stand-in ids for draft tokens after a wrong one (no real token has them)


class ReplayedModelDrafter(Drafter):
    """A model drafter's greedy chain from teacher-forced predictions (`predicted[j]`: its argmax for
    position j given the true tokens before it; `top[j]`: that token's probability)."""

    name = "model"

    def __init__(self, full_ids, predicted, top, seconds_per_token: float, confidence: float = 0.3):
        self.full, self.predicted, self.top = full_ids, predicted, top
        self.seconds_per_token, self.confidence = seconds_per_token, confidence
        self.length = AdaptiveLength(initial=4, maximum=12)  # ModelDrafter's defaults
        self.spent = 0.0

    def begin(self, prompt_ids, **options) -> None:
        self.length.reset()

    def propose(self, context_ids, budget: int) -> DraftTree:
        tokens, right = [], True
        for step in range(min(self.length.current, budget)):
            position = len(context_ids) + step
            if not right or position >= len(self.predicted):
                tokens.append(UNKNOWN - step)  # unknown (an earlier token was wrong): never accepted
                continue
            if step > 0 and self.top[position] < self.confidence:
                break
            tokens.append(self.predicted[position])
            right = tokens[-1] == self.full[position]
        self.spent += self.seconds_per_token * max(len(tokens), 1)
        tree = DraftTree.chain(tokens)
        self.length.drafted(tree)
        return tree

    def accept(self, token_ids) -> None:
        self.length.committed(token_ids)


class RecordedAnswers:
    """A bench Method that answers with recorded token ids and keeps the prompts it was asked."""

    name = "plain"

    def __init__(self, tokenizer):
        self.tokenizer, self.answers, self.cases = tokenizer, [], []

    def run(self, prompt_ids, max_new_tokens, passages=()) -> TurnResult:
        answer = self.answers.pop(0)
        self.cases.append((list(prompt_ids), answer, passages))
        return TurnResult(tuple(answer), self.tokenizer.decode(answer, skip_special_tokens=True), 0.0, None, None, None)


def drafter_seconds(drafter) -> float:
    return getattr(drafter, "spent", 0.0) + sum(drafter_seconds(d) for d in getattr(drafter, "drafters", []))


def replay(prompt_ids, answer, drafter, verify, max_draft: int = 64) -> tuple[float, int]:
    """(seconds, target forwards) of speculative decoding of `answer` after `prompt_ids`, prefill excluded."""
    sizer, committed, seconds, steps, drafted = DraftSizer(verify), list(prompt_ids), 0.0, 0, 0
    drafter.begin(prompt_ids)
    while len(committed) - len(prompt_ids) < len(answer):
        rest = answer[len(committed) - len(prompt_ids):]
        budget = min(max_draft, len(rest) - 1)
        budget = sizer.budget(budget) if budget > 0 else 0
        before = drafter_seconds(drafter)
        tree = drafter.propose(committed, budget).truncated(budget) if budget > 0 else DraftTree.empty()
        draft_s = drafter_seconds(drafter) - before
        accepted = tree.matched_depth(rest)
        seconds += draft_s + verify(1 + len(tree))
        steps += 1
        sizer.observe(len(tree), tree.depth, accepted, draft_s, first=drafted == 0 and len(tree) > 0)
        drafted += len(tree)
        new = rest[: accepted + 1]
        drafter.accept(new)
        committed += new
    return seconds, steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", type=Path, help="a bench --out folder with plain rows")
    parser.add_argument("--questions", type=Path, required=True)
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--draft-model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--draft-ms", type=float, default=130.0, help="drafter milliseconds per drafted token")
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--rag-k", type=int, default=4)
    parser.add_argument("--drafters", default="lookup,retrieval,model,retrieval+model")
    args = parser.parse_args()

    target = load_model(args.model)
    verify = forward_costs(target.model)  # cached by the engine's first run on this machine
    tokenizer = target.tokenizer
    # The prompts exactly as the bench built them: its RAG setup and its turn loop, fed plain's answers.
    config = BenchConfig(args.questions, args.model, args.results, store=args.store, rag_k=args.rag_k)
    rag, corpus = None, None
    if args.store is not None:
        rag, options = rag_setup(config, target, [MethodName.parse("retrieval")], DrafterOptions())
        corpus = options.corpus
    plain = {r["question_id"]: r["token_ids"] for r in map(json.loads, (args.results / "results.jsonl").open())
             if r["method"] == "plain"}
    recorded = RecordedAnswers(tokenizer)
    for question in read_questions(args.questions):
        if question.key in plain:
            recorded.answers = list(plain[question.key])
            run_turns(recorded, question, target, config.max_new_tokens, rag)
    cases = recorded.cases  # (prompt ids, answer ids, passages)
    del target

    draft = load_model(args.draft_model, dtype="float32").model
    predictions = []
    with torch.inference_mode():
        for prompt_ids, answer, _ in cases:
            probs = draft(torch.tensor([list(prompt_ids) + list(answer)])).logits[0].float().softmax(-1)  # [n, vocab]
            top, argmax = probs.max(-1)  # row j predicts position j + 1
            predictions.append(([0] + argmax[:-1].tolist(), [1.0] + top[:-1].tolist()))

    def make(name: str, full, predicted, top) -> Drafter:
        parts = {"lookup": lambda: LookupDrafter(), "retrieval": lambda: RetrievalDrafter(corpus),
                 "model": lambda: ReplayedModelDrafter(full, predicted, top, args.draft_ms / 1000)}
        drafters = [parts[part]() for part in name.split("+")]
        return drafters[0] if len(drafters) == 1 else MixtureDrafter(drafters)

    plain_s = sum(verify(1) * len(answer) for _, answer, _ in cases)
    tokens = sum(len(answer) for _, answer, _ in cases)
    print(f"{len(cases)} answers, {tokens} tokens; one-token forward {verify(1) * 1000:.0f} ms, "
          f"drafter {args.draft_ms:.0f} ms per token")
    for name in args.drafters.split(","):
        seconds = steps = 0
        for (prompt_ids, answer, passages), (predicted, top) in zip(cases, predictions):
            drafter = make(name, list(prompt_ids) + list(answer), predicted, top)
            hand_passages(drafter, tokenizer, passages)
            s, n = replay(prompt_ids, answer, drafter, verify)
            seconds, steps = seconds + s, steps + n
        print(f"{name}: decoding speedup {plain_s / seconds:.2f}x, tau {tokens / steps:.2f}")


if __name__ == "__main__":
    main()
