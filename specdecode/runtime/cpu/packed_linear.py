"""Linear layers on weights that oneDNN reorders once, at load, into its own blocked layout.

On a CPU, `F.linear` on bf16 tensors computes through oneDNN, which reorders the weight into its blocked
layout on every call. For the few rows of a decoding or verification step that reorder costs as much as the
product: Qwen2.5-1.5B's gate+up with 2 rows took 2.3 ms a call against 1.0 ms on a weight reordered once,
and the bf16 target's one-token step 163 ms against 130 (2-core AVX-512 EPYC, side by side in one
process). `PackedLinear` keeps only the reordered weight and calls oneDNN's linear on it: the same
primitive, so where `packing_agrees` finds the products equal to F.linear's bit for bit (every layer shape,
1 to 64 rows and a prompt's chunk), every calibration made through F.linear (an exact target's width
included) holds unchanged. Whether to pack is measured once per model and machine (`packing_pays`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from .linear import _MIN_GAIN, PaddedRowLinear, PaddedRows, _time

PACKED_DTYPES = (torch.bfloat16, torch.float16)  # F.linear computes these through oneDNN on a CPU
_AGREEMENT_ROWS = (1, 2, 3, 5, 8, 17, 64, 300)


def _linear_on_packed(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class PackedLinear(torch.nn.Linear):
    """nn.Linear computing through oneDNN on its weight reordered once (`packed`, an opaque oneDNN tensor
    [out, in]); it holds no dense weight. `weight` gives a dense copy (made on each access), and a deep copy of
    the layer is a plain nn.Linear with that dense weight (a quantized twin is made from such a copy)."""

    packed: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear_on_packed(x, self.packed, self.bias)

    @property
    def weight(self) -> torch.Tensor:
        return self.packed.to_dense()

    def select_rows(self, rows: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """x [..., in] -> the products of output channels `rows` [r] only [..., r], on those rows reordered once
        (a drafter's pruned output layer: drafters/pruned_head.py), without keeping a dense copy."""
        packed = torch.ops.mkldnn._reorder_linear_weight(self.packed.to_dense()[rows])  # [r, in], reordered
        bias = None if self.bias is None else self.bias[rows]
        return partial(_linear_on_packed, packed=packed, bias=bias)

    def __deepcopy__(self, memo) -> torch.nn.Linear:
        copy = torch.nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        copy.weight = torch.nn.Parameter(self.packed.to_dense(), requires_grad=False)
        if self.bias is not None:
            copy.bias = torch.nn.Parameter(self.bias.detach().clone(), requires_grad=False)
        memo[id(self)] = copy
        return copy


class PaddedRowPackedLinear(PaddedRows, PackedLinear):
    """PackedLinear with padded one-row inputs (an exact target's layers)."""


_PACKED = {torch.nn.Linear: PackedLinear, PaddedRowLinear: PaddedRowPackedLinear}
_UNPACKED = {packed: plain for plain, packed in _PACKED.items()}


def packable_layers(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The model's float linear layers that oneDNN computes (bf16/fp16 on a CPU with oneDNN), in model order."""
    if not torch.backends.mkldnn.is_available():
        return []
    return [m for m in model.modules() if type(m) in _PACKED and m.weight.device.type == "cpu"
            and m.weight.dtype in PACKED_DTYPES]


def packing_agrees(layers: list[torch.nn.Linear]) -> bool:
    """Whether every distinct layer shape computes on its packed weight what F.linear computes, bit for bit,
    for 1 to 64 rows and a prompt's chunk (random inputs, the layer's own weights)."""
    generator = torch.Generator().manual_seed(0)
    seen = set()
    with torch.inference_mode():
        for layer in layers:
            shape = (layer.out_features, layer.in_features, layer.weight.dtype, layer.bias is not None)
            if shape in seen:
                continue
            seen.add(shape)
            weight = layer.weight.detach()
            packed = torch.ops.mkldnn._reorder_linear_weight(weight)
            for rows in _AGREEMENT_ROWS:
                x = torch.randn(rows, layer.in_features, generator=generator).to(weight.dtype)  # [rows, in]
                if not torch.equal(_linear_on_packed(x, packed, layer.bias), F.linear(x, weight, layer.bias)):
                    return False
    return True


def packing_pays(model: torch.nn.Module) -> bool:
    """Whether packing this model's layers is exact (packing_agrees) and clearly faster on this CPU: its largest
    layer below the output layer, two rows (a one-token step's padded product), best of five (linear._time)."""
    layers = packable_layers(model)
    body = [m for m in layers if m is not model.get_output_embeddings()] or layers
    if not body or not packing_agrees(layers):
        return False
    largest = max(body, key=lambda m: m.weight.numel())
    weight, bias = largest.weight.detach(), largest.bias
    packed = torch.ops.mkldnn._reorder_linear_weight(weight)
    x = torch.randn(2, largest.in_features).to(weight.dtype)  # [2, in]
    with torch.inference_mode():
        dense = _time(lambda: F.linear(x, weight, bias))
        reordered = _time(lambda: _linear_on_packed(x, packed, bias))
    return dense >= _MIN_GAIN * reordered


def pack_linear_layers(model: torch.nn.Module) -> int:
    """Reorder every packable layer's weight once and compute through it (PackedLinear); the dense weight is
    dropped (a weight tied to the input embeddings stays there). Returns how many layers were packed."""
    layers = packable_layers(model)
    for layer in layers:
        packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach())
        del layer._parameters["weight"]
        layer.__class__ = _PACKED[type(layer)]
        layer.packed = packed
    return len(layers)


def unpack_linear_layers(model: torch.nn.Module) -> int:
    """Give every packed layer its dense weight back (plain nn.Linear / PaddedRowLinear again); returns how many."""
    layers = [m for m in model.modules() if type(m) in _UNPACKED]
    for layer in layers:
        dense = layer.packed.to_dense()
        layer.__class__ = _UNPACKED[type(layer)]
        del layer.packed
        layer.weight = torch.nn.Parameter(dense, requires_grad=False)
    return len(layers)
