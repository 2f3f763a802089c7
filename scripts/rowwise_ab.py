"""Side by side in one process: an exact target's verification attention as it is now against its version
at another commit (`--base`): row-wise attention (runtime/cpu/rowwise_attention.py), the padding of a
verification's rows and the mask they get (runner._padded, SDPABackend.forward), on long-suite documents: plain and speculative decoding under each,
interleaved per question (the order alternating), one generator (the second variant reuses the prompt's
prefill), the decode phase's tokens/s and whether the tokens equal the first run's.

    python scripts/rowwise_ab.py --base ae37309 --drafter lookup+model:qwen2.5-coder-0.5b-instruct \
        --category long_summarization_8k --limit 4
"""
import importlib.util
import inspect
import subprocess
from pathlib import Path

from interleaved_ab import ab_parser, chosen_questions, interleaved_runs

import specdecode.runtime.lean_forward as lean_forward
import specdecode.runtime.runner as runner
from specdecode.drafters.registry import DrafterOptions, make_drafter
from specdecode.engine import SpeculativeGenerator
from specdecode.models.load import load_model

SWAPPED = {"specdecode/runtime/cpu/rowwise_attention.py": [(lean_forward, "rowwise_attention", "rowwise_attention")],
           "specdecode/runtime/runner.py": [(runner, "_padded", "_padded"),
                                            (runner.SDPABackend, "forward", "SDPABackend.forward")]}
# file: [(where today's code looks the function up, under what name, its path in that file)]

parser = ab_parser("~/.cache/specdecode/bench/long_summarization.jsonl", "long_summarization_8k", 4,
                   "lookup+model:qwen2.5-coder-0.5b-instruct")
parser.add_argument("--base", required=True, help="the commit whose functions are the A side")
args = parser.parse_args()


def base_module(path: str):
    """File `path` as it was at the base commit, run as a module (its imports resolved in today's package)."""
    source = subprocess.run(["git", "show", f"{args.base}:{path}"], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).parent).stdout
    package = path.removesuffix(".py").replace("/", ".").rsplit(".", 1)[0]
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(f"{package}._base", loader=None))
    module.__package__ = package
    exec(compile(source, f"{args.base}:{path}", "exec"), module.__dict__)
    return module


def called_as_today(function):
    """`function` taking what today's callers pass: the positional arguments and keywords it knows."""
    parameters = inspect.signature(function).parameters
    taken = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters.values())
    known = lambda name: name in parameters or any(p.kind == p.VAR_KEYWORD for p in parameters.values())  # noqa: E731
    return lambda *arguments, **keywords: function(*arguments[:taken],
                                                   **{k: v for k, v in keywords.items() if known(k)})


functions = {"now": {(owner, name): getattr(owner, name) for swaps in SWAPPED.values() for owner, name, _ in swaps}}
functions[f"base {args.base}"] = {}
for path, swaps in SWAPPED.items():
    module = base_module(path)
    for owner, name, dotted in swaps:
        function = module
        for part in dotted.split("."):
            function = getattr(function, part)
        functions[f"base {args.base}"][(owner, name)] = called_as_today(function)


def switch(variant: str) -> None:
    for (owner, name), function in functions[variant].items():
        setattr(owner, name, function)


questions = chosen_questions(args)
target = load_model("qwen2.5-coder-1.5b-instruct", dtype="auto")
assert target.exact_steps, "this CPU gives the bf16 target no exact steps: it does not attend row-wise"
generator = SpeculativeGenerator(target, make_drafter(args.drafter, target, DrafterOptions()))
interleaved_runs({name: generator for name in reversed(functions)}, questions, args.max_new_tokens,
                 before=switch)
