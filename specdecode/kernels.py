"""CPU matmul orientation for the few-token forwards that speculative decoding lives on.

`F.linear(x, W)` computes x @ W^T. For a handful of rows (1-64 tokens: decoding and verifying a
draft) some BLAS builds run this far below memory speed; the same product computed as
(W @ x^T)^T can be 2-3x faster (seen with MKL on an AVX2 AMD EPYC: a 16-token forward of
Qwen2.5-1.5B in fp32 went from ~4x to ~2x the cost of a 1-token forward). Other machines and
dtypes prefer `F.linear`. So nothing is assumed: `tune_linear_layers` times both orientations on
the model's own largest layer shape, on this machine, and switches the model's nn.Linear modules
to `WeightFirstLinear` only where that measurably wins.

Both orientations compute the same products; only the summation order inside a dot product may
differ, as between any two BLAS kernels. Exactness of speculative decoding is unaffected: plain and
speculative decoding run the same modules.
"""

from __future__ import annotations

import time
from itertools import chain

import torch
import torch.nn.functional as F

from .errors import SpecDecodeError
from .quantize import Int4Linear, Int8Linear, RowInt8Linear, fbgemm_available
from .rowwise_attention import use_rowwise_attention

SMALL_ROWS = 64  # up to this many rows, WeightFirstLinear computes (W @ x^T)^T
_PROBE_ROWS = (1, 4, 8, 16)
_MIN_GAIN = 1.15  # switch only for a clear win
_MIN_PROBED_WEIGHTS = 1 << 20  # smaller layers take microseconds: a timing of them is noise, keep F.linear
_MIN_GAIN_QUANTIZED = 1.25  # a drafter is quantized only for a clear win
_PAD_GAIN = 0.85  # pad a forward only to a size measured >= 15% cheaper
CPU_KERNEL_MODES = ("auto", "weight_first", "standard")


class WeightFirstLinear(torch.nn.Linear):
    """nn.Linear computing few-row inputs as (W @ x^T)^T; same parameters, same results up to rounding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if rows == 0 or rows > SMALL_ROWS:
            return F.linear(x, self.weight, self.bias)
        flat = x.reshape(rows, x.shape[-1])  # [rows, in]
        if self.bias is None:
            out = torch.mm(self.weight, flat.t())  # [out, rows]
        else:
            out = torch.addmm(self.bias[:, None], self.weight, flat.t())
        return out.t().contiguous().reshape(*x.shape[:-1], self.out_features)


class PaddedRows:
    """Mixin for a linear layer: a one-row input is computed as a two-row product (the row twice), so that
    a one-token step takes the batched kernel's path. Where a CPU's one-row kernel may round differently
    from its batched one (oneDNN's bf16 matrix-vector vs matrix-matrix product: `one_row_rounding`) while
    the batched one gives every row the same bits whatever the row count (`rows_agree`), a one-token step
    then computes bit for bit what a verification computes for that token."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() != x.shape[-1]:  # more than one row: the batched kernel already
            return super().forward(x)
        doubled = torch.cat([x, x], dim=-2)  # [..., 2, in]
        return super().forward(doubled)[..., :1, :]  # [..., 1, out]


class PaddedRowLinear(PaddedRows, torch.nn.Linear):
    """nn.Linear with padded one-row inputs (same parameters). On an AVX-512 BF16 EPYC (2 threads) the
    two-row product costs no more than the one-row one (1536 x 8960: 0.64 vs 0.67 ms, best of 5
    interleaved rounds)."""


class PaddedRowInt8Linear(PaddedRows, Int8Linear):
    """Int8Linear with padded one-row inputs (same buffers)."""


class PaddedRowInt4Linear(PaddedRows, Int4Linear):
    """Int4Linear with padded one-row inputs (same buffers)."""


_PADDED = {torch.nn.Linear: PaddedRowLinear, Int8Linear: PaddedRowInt8Linear, Int4Linear: PaddedRowInt4Linear}


_ROW_COUNTS = tuple(range(2, 66))  # every verification size: the pending token + up to 64 draft nodes


_PROBED_OUTPUTS = 4096  # a float layer's first output channels stand for all of them (see rows_agree)


def rows_agree(layers: list[torch.nn.Module], linear=None) -> bool:
    """Whether every row of a product gets the same bits among any 2 to 65 rows, checked on each distinct
    layer shape with its own weights: nn.Linear layers through `linear` (default F.linear as it is when
    called), weight-only int8/int4 layers through their own kernels. A float or int8 layer is checked on its
    first 4096 output channels (int4: whole): a channel's rounding is that of its dot product over the input width (on an
    AVX-512 BF16 EPYC whole layers and slices gave the same verdicts), and each row count's first product
    costs a weight reorder (Qwen2.5-1.5B's 151936 x 1536 head in bf16: ~1 s each whole, 3.1 s for 64 counts
    on 16384 channels, 0.4 s on 4096)."""
    return _rounding(layers, linear or F.linear, one_row=False) != "unstable"


def one_row_rounding(layers: list[torch.nn.Module], linear=None) -> str:
    """How a model's products round row by row: "unstable" where rows_agree does not hold; else "batched"
    where a row alone rounds differently from the same row among others (oneDNN's matrix-vector vs
    matrix-matrix product; SmolLM2's 576 x 1536 layer in bf16 on an AVX-512 BF16 EPYC: 5 rows of 64),
    "stable" where no row of 65 does. A diagnostic (exact steps pad every one-row product anyway)."""
    return _rounding(layers, linear or F.linear, one_row=True)


def _product(layer: torch.nn.Module, linear):
    """(x [1, rows, in] -> the layer's product [1, rows, out], the dtype x must have): a float or int8
    layer's first `_PROBED_OUTPUTS` channels, an int4 layer whole."""
    if isinstance(layer, Int8Linear):  # the same codes and scales, first channels only
        return layer.select_rows(torch.arange(min(layer.out_features, _PROBED_OUTPUTS))), layer.scale.dtype
    if isinstance(layer, Int4Linear):
        return layer, layer.scales_and_zeros.dtype
    weight, bias = layer.weight[:_PROBED_OUTPUTS], layer.bias
    bias = None if bias is None else bias[:_PROBED_OUTPUTS]
    return (lambda x: linear(x, weight, bias)), weight.dtype


def _rounding(layers: list[torch.nn.Module], linear, one_row: bool) -> str:
    seen: set[tuple[type, int, int]] = set()  # (kernel class, out, in): each checked once
    one_row_differs = False
    with torch.inference_mode():
        for layer in layers:
            key = (type(layer), layer.out_features, layer.in_features)
            if key in seen:
                continue
            seen.add(key)
            product, dtype = _product(layer, linear)
            generator = torch.Generator().manual_seed(len(seen))
            x = torch.randn(1, _ROW_COUNTS[-1], layer.in_features, generator=generator)  # [1, 65, in]
            x = x.to(device=next(chain(layer.parameters(), layer.buffers())).device, dtype=dtype)
            reference = product(x)  # [1, 65, out]
            if any(not torch.equal(product(x[:, :rows]), reference[:, :rows]) for rows in _ROW_COUNTS[:-1]):
                return "unstable"
            if one_row and not one_row_differs:
                one_row_differs = any(not torch.equal(product(x[:, row:row + 1]), reference[:, row:row + 1])
                                      for row in range(_ROW_COUNTS[-1]))
    return "batched" if one_row_differs else "stable"


def _time(fn, repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def weight_first_gain(out_features: int, in_features: int, dtype: torch.dtype) -> float:
    """How many times faster (W @ x^T)^T is than F.linear for few rows, on this CPU (>1 = faster)."""
    weight = torch.randn(out_features, in_features, dtype=dtype)
    linear_s = rows_s = 0.0
    with torch.inference_mode():
        for rows in _PROBE_ROWS:
            x = torch.randn(rows, in_features, dtype=dtype)
            linear_s += _time(lambda: F.linear(x, weight))
            rows_s += _time(lambda: torch.mm(weight, x.t()).t().contiguous())
    return linear_s / rows_s


def fastest_decode_dtype(device: torch.device) -> torch.dtype:
    """The dtype in which a one-token forward (matrix-vector products, memory-bound) is fastest here.

    Drafters run mostly one-token forwards and their rounding never changes the output, so they may
    use a different dtype from the target: on CPUs without native bf16, bf16 weights still halve the
    bytes read per token. Measured, not assumed.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    seconds = {}
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            weight = torch.randn(4096, 2048).to(dtype)
            x = torch.randn(1, 2048).to(dtype)
            seconds[dtype] = _time(lambda: F.linear(x, weight), repeats=10)
    return min(seconds, key=seconds.get)


def fastest_draft_quantization(device: torch.device) -> str | None:
    """"w8a8" where its one-row product is measured clearly faster (>= 1.25x) than the fastest dtype's,
    else None: what quantization="auto" means for a model that only drafts.

    A drafter's weights never change the output, so the fastest one-token forward wins. On an AVX2 EPYC
    (2 threads, a 4096 x 2048 layer, one row): fp32 2.6 ms, bf16 1.1 ms, w8a8 0.44 ms; a w8a8 drafter
    also prefills in fp32 kernels (Qwen2.5-0.5B, 900 tokens: 6.4 s vs 37 s in bf16 on that CPU).
    """
    if device.type != "cpu" or not fbgemm_available():
        return None
    dtype = fastest_decode_dtype(device)
    with torch.inference_mode():
        weight, x = torch.randn(4096, 2048), torch.randn(1, 2048)
        layer = RowInt8Linear(weight, None)
        weight, x_dtype = weight.to(dtype), x.to(dtype)
        dtype_s = _time(lambda: F.linear(x_dtype, weight), repeats=10)
        w8a8_s = _time(lambda: layer(x), repeats=10)
    return "w8a8" if w8a8_s * _MIN_GAIN_QUANTIZED < dtype_s else None


def padded_sizes(model: torch.nn.Module, max_rows: int = 32) -> list[int]:
    """padded[q] = the number of rows, >= q, whose forward is cheapest on this machine (q = 0..max_rows).

    BLAS kernels favour some row counts: with MKL on AVX2, 4 rows cost less than 3 and 16 less than
    12. Timing the model's largest linear layer (in its own orientation) for 1..max_rows rows gives
    the curve; feeding a verification a few padding tokens up to a cheaper size is then free speed.
    """
    layers = [m for m in linear_modules(model) if m.out_features < 65536]
    if not layers or next(model.parameters()).device.type != "cpu":
        return list(range(max_rows + 1))
    layer = max(layers, key=lambda m: m.weight.numel())
    samples: list[list[float]] = [[] for _ in range(max_rows + 1)]
    with torch.inference_mode():
        inputs = [torch.randn(1, rows, layer.in_features, dtype=layer.weight.dtype) for rows in range(max_rows + 1)]
        for _ in range(5):  # rounds over all sizes, so machine drift hits every size alike
            for rows in range(1, max_rows + 1):
                start = time.perf_counter()
                layer(inputs[rows])
                samples[rows].append(time.perf_counter() - start)
    cost = [sorted(s)[len(s) // 2] if s else 0.0 for s in samples]  # medians
    padded = list(range(max_rows + 1))
    for rows in range(2, max_rows + 1):  # one row is plain decoding: never padded
        cheaper = [r for r in range(rows + 1, max_rows + 1) if cost[r] < _PAD_GAIN * cost[rows]]
        padded[rows] = min(cheaper, key=lambda r: (cost[r], r)) if cheaper else rows
    return padded


def linear_modules(model: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in model.modules() if type(m) in (torch.nn.Linear, WeightFirstLinear, PaddedRowLinear)]


def check_cpu_kernels(mode: str) -> None:
    if mode not in CPU_KERNEL_MODES:
        raise SpecDecodeError(f"unknown cpu_kernels mode {mode!r}; use one of {', '.join(CPU_KERNEL_MODES)}.")


def tune_linear_layers(model: torch.nn.Module, mode: str = "auto") -> str:
    """Choose the matmul orientation of a CPU model's linear layers: "auto" measures; "weight_first"
    ((W @ x^T)^T for few rows) or "standard" (F.linear) force one. Returns the orientation in use.
    A model whose layers are all tiny (test models) keeps "standard": timing them would be noise, and
    two loads of one model would then differ by rounding."""
    check_cpu_kernels(mode)
    layers = linear_modules(model)
    if not layers or mode == "standard" or next(model.parameters()).device.type != "cpu":
        chosen = "standard"
    elif mode == "weight_first":
        chosen = "weight_first"
    else:
        largest = max(layers, key=lambda m: m.weight.numel() if m.out_features < 65536 else 0)
        probed = largest.weight.numel() >= _MIN_PROBED_WEIGHTS
        gain = weight_first_gain(largest.out_features, largest.in_features, largest.weight.dtype) if probed else 0.0
        chosen = "weight_first" if gain >= _MIN_GAIN else "standard"
    for layer in layers:
        layer.__class__ = WeightFirstLinear if chosen == "weight_first" else torch.nn.Linear
    return chosen


def exact_one_token_steps(model: torch.nn.Module) -> str | None:
    """Make a bf16/fp16 CPU target's verifications compute, bit for bit, what its one-token steps compute
    (then speculative decoding is token-exact in bf16 too, not only up to near-ties of the logits).

    Needs products whose rows do not depend on the row count (`rows_agree`: float layers and weight-only
    int8/int4 ones alike) and row-wise attention (rowwise_attention.py). Every layer's one-row input is
    padded (`PaddedRows`): a CPU's one-row path may round some rows differently (`one_row_rounding`), and
    a random probe cannot prove that it never does. Returns the float layers'
    kernel now in use ("padded_row"; "quantized" when every layer is int8/int4), or None where this CPU's
    kernels do not allow it (the model is left as it was)."""
    if next(model.parameters()).device.type != "cpu":  # a GPU's kernels: not probed, and row-wise attention
        return None  # would cost it far more than a CPU
    layers = linear_modules(model)
    if layers and type(layers[0]) is not torch.nn.Linear:  # another orientation was chosen for speed
        return None
    quantized = [m for m in model.modules() if type(m) in (Int8Linear, Int4Linear)]
    if not (layers or quantized) or not rows_agree(layers + quantized):
        return None
    try:
        use_rowwise_attention(model)
    except SpecDecodeError:
        return None
    for layer in layers + quantized:
        layer.__class__ = _PADDED[type(layer)]
    return "padded_row" if layers else "quantized"
