"""`specdecode profile`: what calibration chose for a model on this machine, and its forward costs.

The forward-cost curve (seconds of one forward vs tokens fed, after a context) is what decides how much a
draft may cost; the exact width bounds how wide a verification may be. Both are printed with the machine
key they belong to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import SpecDecodeError


@dataclass(frozen=True)
class ProfileConfig:
    model: str
    dtype: str = "auto"
    quantize: str | None = None
    sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    context: int = 512
    rounds: int = 3
    attention: str = "auto"  # the backend the forwards run through (runtime.runner.select_backend)


def run_profile(config: ProfileConfig, write: Callable[[str], None]) -> None:
    import torch

    from ..models.load import load_model
    from ..runtime.calibrate import measure_forward_costs
    from ..runtime.cpu.rowwise_attention import fold_rows_of
    from ..runtime.machine import machine_key
    from ..runtime.runner import select_backend

    sizes = tuple(sorted(set(config.sizes)))
    if not sizes or sizes[0] != 1 or config.context < 1 or config.rounds < 1:
        raise SpecDecodeError("profile needs --sizes starting at 1 (e.g. 1,2,4,8), --context >= 1 and --rounds >= 1.")
    runner = select_backend(config.attention)  # an unknown name fails before the model loads
    target = load_model(config.model, dtype=config.dtype, quantize=config.quantize)
    runner.prepare(target.model)
    if target.exact_steps:
        width = f"{target.max_exact_rows or 'any number of'} rows"
    else:
        width = "none (verifications may round apart from one-token steps)"
    write(f"machine: {machine_key()}\n")
    write(f"model: {target.name}, {str(target.dtype).removeprefix('torch.')}, quantization "
          f"{target.quantization or 'none'}, linear kernel {target.linear_kernel}, {runner.describe(target.model)}\n")
    fold = fold_rows_of(target.model.config._attn_implementation)
    attention = f"; tokens per attention call: {fold}" if fold else ""
    write(f"exact steps: {target.exact_steps}; widest exact forward: {width}{attention}\n")
    if target.calibration is not None:
        write(f"calibration: {target.calibration.path}\n")
    split_costs = runner.split_costs_of(target.model) if hasattr(runner, "split_costs_of") else None
    if split_costs is not None:
        write("\none layer's attention, ms: one masked call / split from the prefix (\"auto\" takes the faster):\n")
        write(split_costs.table_markdown())
    with torch.inference_mode():
        costs = measure_forward_costs(target.model, runner, sizes=sizes, context=config.context, rounds=config.rounds)
    write(f"\none forward after {config.context} tokens (median of {config.rounds} rounds):\n")
    write("| tokens fed | ms | x one token |\n| --- | --- | --- |\n")
    for size, seconds in zip(costs.sizes, costs.seconds):
        write(f"| {size} | {seconds * 1000:.1f} | {seconds / costs.seconds[0]:.2f} |\n")
