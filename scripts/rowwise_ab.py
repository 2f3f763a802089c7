"""Side by side in one process: an exact target's verification attention as it is now against its version
at another commit (`--base`): row-wise attention (runtime/cpu/rowwise_attention.py) and the padding of a
verification's rows (runner._padded), on long-suite documents: plain and speculative decoding under each,
interleaved per question (the order alternating), one generator (the second variant reuses the prompt's
prefill), the decode phase's tokens/s and whether the tokens equal the first run's.

    python scripts/rowwise_ab.py --base ae37309 --drafter lookup+model:qwen2.5-coder-0.5b-instruct \
        --category long_summarization_8k --limit 4
"""
import argparse
import importlib.util
import inspect
import subprocess
from pathlib import Path

from interleaved_ab import interleaved_runs

import specdecode.runtime.lean_forward as lean_forward
import specdecode.runtime.runner as runner
from specdecode.bench.questions import read_questions, select_questions
from specdecode.drafters.registry import DrafterOptions, make_drafter
from specdecode.engine import SpeculativeGenerator
from specdecode.models.load import load_model

SWAPPED = {"specdecode/runtime/cpu/rowwise_attention.py": (lean_forward, "rowwise_attention"),
           "specdecode/runtime/runner.py": (runner, "_padded")}  # file: (module that calls it, function)

parser = argparse.ArgumentParser()
parser.add_argument("--base", required=True, help="the commit whose functions are the A side")
parser.add_argument("--questions", default="~/.cache/specdecode/bench/long_summarization.jsonl")
parser.add_argument("--category", default="long_summarization_8k")
parser.add_argument("--limit", type=int, default=4)
parser.add_argument("--drafter", default="lookup+model:qwen2.5-coder-0.5b-instruct")
parser.add_argument("--max-new-tokens", type=int, default=128)
args = parser.parse_args()


def base_function(path: str, name: str):
    """Function `name` of file `path` as it was at the base commit (its imports resolved in today's package)."""
    source = subprocess.run(["git", "show", f"{args.base}:{path}"], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parent).stdout
    package = path.removesuffix(".py").replace("/", ".").rsplit(".", 1)[0]
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(f"{package}._base", loader=None))
    module.__package__ = package
    exec(compile(source, f"{args.base}:{path}", "exec"), module.__dict__)
    function = getattr(module, name)
    taken = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                for p in inspect.signature(function).parameters.values())
    return lambda *arguments, **keywords: function(*arguments[:taken], **keywords)  # today's callers may pass more


functions = {f"base {args.base}": {(module, name): base_function(path, name) for path, (module, name) in SWAPPED.items()},
             "now": {(module, name): getattr(module, name) for module, name in SWAPPED.values()}}


def switch(variant: str) -> None:
    for (module, name), function in functions[variant].items():
        setattr(module, name, function)


questions = select_questions(read_questions(Path(args.questions).expanduser()), [args.category], args.limit)
target = load_model("qwen2.5-coder-1.5b-instruct", dtype="auto")
assert target.exact_steps, "this CPU gives the bf16 target no exact steps: it does not attend row-wise"
generator = SpeculativeGenerator(target, make_drafter(args.drafter, target, DrafterOptions()))
interleaved_runs({name: generator for name in functions}, questions, args.max_new_tokens,
                 before=switch)
