"""One product for the projections that read the same input: q/k/v of an attention layer, gate/up of an MLP.

A decoder layer multiplies its normalised hidden state by q_proj, k_proj and v_proj, then (in the MLP) by
gate_proj and up_proj: five small products where two would do. On a CPU each product pays a fixed cost
besides reading its weights (a w8a8 layer also quantizes its input: several small ops), and for one
token's rows that fixed cost is a real share of a small product; one product per group pays it once.
Quantized models are fused (quantize_model): their one-token steps measure cheaper fused. Float ones are
not (a bf16 gate+up measured no faster fused). Forward costs on this machine: `specdecode profile`;
measured: docs/benchmarks.md (EPYC AVX-512, 2026-11-27, forward cost vs tokens fed).

`fuse_projections` concatenates each such group's weights into one `nn.Linear` (`FusedProjection.fused`;
quantized afterwards like any other layer: per-output-channel scales give the same codes) and puts a
`ProjectionPart` where each projection was, so the model's own forward runs unchanged: the first part
called with an input computes the whole product, the others take their slice of it. Per-channel results
do not depend on which other channels share the product, so fusion moves no token's result at all in
w8a8 (exact integer sums), and elsewhere plain and speculative decoding both run the fused model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

# attribute names of the projections that share an input (transformers' Llama, Qwen2, Mistral, Gemma, ...)
# with the name the fused group takes (the names Phi-3's own fused layers have)
GROUPS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


class FusedProjection(torch.nn.Module):
    """The product of several projections of one input, computed once and handed out in slices.

    It keeps one product between the calls of its parts within a forward (the model calls q_proj, k_proj,
    v_proj on the same tensor one after the other) and drops it once every part has taken its slice."""

    def __init__(self, layers: list[torch.nn.Linear]):
        super().__init__()
        self.sizes = [layer.out_features for layer in layers]
        first = layers[0].weight
        self.fused = torch.nn.Linear(first.shape[1], sum(self.sizes), bias=False, device="meta")  # no init
        self.fused.weight = torch.nn.Parameter(torch.cat([layer.weight.detach() for layer in layers]),
                                               requires_grad=first.requires_grad)  # [sum(out), in]
        if any(layer.bias is not None for layer in layers):
            self.fused.bias = torch.nn.Parameter(torch.cat([
                layer.bias.detach() if layer.bias is not None else first.new_zeros(layer.out_features)
                for layer in layers]), requires_grad=first.requires_grad)  # [sum(out)]
        self._held = _HeldProduct()  # a plain object: setting its fields skips nn.Module's __setattr__

    def part(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Projection `index` of x [..., in] -> [..., sizes[index]]."""
        held = self._held
        version = -1 if x.is_inference() else x._version  # inference tensors keep no version counter
        if held.input is not x or held.version != version or index not in held.untaken:
            held.parts = self.fused(x).split(self.sizes, dim=-1)  # each [..., sizes[i]], a view
            held.input, held.version, held.untaken = x, version, set(range(len(self.sizes)))
        held.untaken.discard(index)
        part = held.parts[index]
        if not held.untaken:
            held.input, held.parts = None, ()
        return part


class _HeldProduct:
    """The product a FusedProjection holds between its parts' calls: its input (and version), its slices
    and the parts that have not taken theirs yet."""

    __slots__ = ("input", "version", "parts", "untaken")

    def __init__(self):
        self.input: torch.Tensor | None = None
        self.version = -1
        self.parts: tuple[torch.Tensor, ...] = ()
        self.untaken: set[int] = set()


class ProjectionPart(torch.nn.Module):
    """Stands where one projection of a fused group was; its weights live in the group's `fused` layer."""

    def __init__(self, group: FusedProjection, index: int):
        super().__init__()
        self._group = (group,)  # a tuple: not registered again as a submodule of this part
        self.index = index
        self.in_features, self.out_features = group.fused.in_features, group.sizes[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._group[0].part(x, self.index)


def products_of(layers: Sequence[torch.nn.Module]) -> Callable[[torch.Tensor], Sequence[torch.Tensor]]:
    """A function x [..., in] -> each layer's product of x: the fused group's one product split in its slices
    where `layers` are a FusedProjection's parts in order (what calling the parts one by one computes, without
    the bookkeeping between their calls), else each layer called on its own."""
    groups = {id(layer._group[0]) for layer in layers if type(layer) is ProjectionPart}
    if len(groups) == 1 and all(type(layer) is ProjectionPart for layer in layers) and \
            [layer.index for layer in layers] == list(range(len(layers[0]._group[0].sizes))):
        group = layers[0]._group[0]
        return lambda x: group.fused(x).split(group.sizes, dim=-1)  # each [..., sizes[i]], a view
    return lambda x: [layer(x) for layer in layers]


def fuse_projections(model: torch.nn.Module) -> int:
    """Fuse every group of float `nn.Linear` projections that read the same input (GROUPS); returns how
    many groups were fused. Groups with a member of another kind (already quantized, say) are left alone."""
    fused = 0
    for module in list(model.modules()):
        for group_name, names in GROUPS.items():
            layers = [getattr(module, name, None) for name in names]
            if not all(type(layer) is torch.nn.Linear for layer in layers):
                continue
            if len({(layer.in_features, layer.weight.dtype, layer.weight.device) for layer in layers}) != 1:
                continue
            if hasattr(module, group_name):
                continue
            group = FusedProjection(layers)
            module.add_module(group_name, group)
            for index, name in enumerate(names):
                setattr(module, name, ProjectionPart(group, index))
            fused += 1
    return fused
