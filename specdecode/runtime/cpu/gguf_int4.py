"""int4 from a GGUF's own 4-bit blocks: keep the weights a model was published with.

GGUF 4-bit formats hold, per block of 32 weights, 4-bit codes q and a linear map back to floats:
    Q4_0: w = d * (q - 8)            Q4_1: w = d * q + m
    Q4_K: super-blocks of 256 = 8 sub-blocks of 32, w = (d * sc_j) * q - dmin * m_j (6-bit sc_j, m_j)
All are `w = (q - 8) * scale + zero` per group of 32 input channels, the form of PyTorch's CPU int4
kernel, so these layers become Int4Linear(group_size=32) with the GGUF's codes unchanged. Each one is
checked against the model's dequantized weight on random inputs before it replaces it; layers in
other formats (Q6_K, Q8_0, F16, ...) or that do not check out are left to `quantize_model`'s
fallback (int8, closer to their 6-8 bits than a 4-bit re-quantization would be).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from .quantize import Int4Linear, quantize_model

GROUP = 32
LAYER_NAMES = {  # GGUF block tensor -> module path inside a llama-style decoder layer
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
CHECK_TOLERANCE = 1e-3  # max |difference| on random inputs, relative to the largest output


def hf_module_name(gguf_name: str) -> str | None:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj`; `output.weight` -> `lm_head`."""
    if gguf_name == "output.weight":
        return "lm_head"
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", gguf_name)
    if match and match.group(2) in LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{LAYER_NAMES[match.group(2)]}"
    return None


def int4_codes(qtype: str, raw: np.ndarray, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 4-bit GGUF tensor's bytes -> codes [rows, cols] (0..15), scale and zero [rows, cols / 32]."""
    import gguf

    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1, {"Q4_0": 18, "Q4_1": 20, "Q4_K": 144}[qtype])
    if qtype in ("Q4_0", "Q4_1"):
        d = blocks[:, 0:2].view(np.float16).astype(np.float32)[:, 0]  # [n]
        offset = 2 if qtype == "Q4_0" else 4
        qs = blocks[:, offset:offset + 16]  # [n, 16]: low nibbles = values 0..15, high = 16..31
        codes = np.concatenate([qs & 0x0F, qs >> 4], axis=1)  # [n, 32]
        scale = d
        zero = np.zeros_like(d) if qtype == "Q4_0" else blocks[:, 2:4].view(np.float16).astype(np.float32)[:, 0] + 8 * d
    else:
        d = blocks[:, 0:2].view(np.float16).astype(np.float32)  # [n, 1]
        dmin = blocks[:, 2:4].view(np.float16).astype(np.float32)
        sc, mn = gguf.quants.Q4_K.get_scale_min(blocks[:, 4:16])  # [n, 8] each
        qs = blocks[:, 16:144].reshape(-1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
        codes = (qs & 0x0F).reshape(-1, 32)  # [n * 8, 32]: sub-block 2c from low nibbles, 2c + 1 from high
        scale = (d * sc.astype(np.float32)).reshape(-1)  # [n * 8]
        zero = 8 * scale - (dmin * mn.astype(np.float32)).reshape(-1)
    codes_t = torch.from_numpy(codes.astype(np.int32).reshape(rows, cols))
    groups = cols // GROUP
    return codes_t, torch.from_numpy(scale.reshape(rows, groups)), torch.from_numpy(zero.reshape(rows, groups))


def row_orders(rows: int, config) -> list[torch.Tensor]:
    """Row orders to try: as stored, then undoing llama.cpp's RoPE permutation of q / k rows (per
    attention head, or per key-value head)."""
    orders = [torch.arange(rows)]
    for heads in dict.fromkeys((getattr(config, "num_attention_heads", 0), getattr(config, "num_key_value_heads", 0))):
        if heads and rows % (2 * heads) == 0:
            half = rows // heads // 2
            orders.append(torch.arange(rows).reshape(heads, half, 2).transpose(1, 2).reshape(rows))
    return orders


def _checks_out(layer: torch.nn.Module, linear: torch.nn.Linear) -> bool:
    probe = torch.randn(2, linear.in_features, generator=torch.Generator().manual_seed(0)).to(linear.weight.dtype)
    with torch.no_grad():
        expected = probe @ linear.weight.t()  # bias excluded on both sides
        got = layer(probe) - (layer.bias if layer.bias is not None else 0)
    return float((got.float() - expected.float()).abs().max()) <= CHECK_TOLERANCE * float(expected.abs().max())


def import_gguf_int4(model: torch.nn.Module, gguf_path: str | Path, fallback: str = "int8") -> dict[str, int]:
    """Replace the model's linear layers stored as Q4_0 / Q4_1 / Q4_K in `gguf_path` by Int4Linear
    with the GGUF's own codes; quantize the other linear layers with `fallback`. Returns counts."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    modules = dict(model.named_modules())
    dtype = next(model.parameters()).dtype
    imported = 0
    for tensor in reader.tensors:
        qtype = tensor.tensor_type.name
        name = hf_module_name(tensor.name)
        linear = modules.get(name) if name else None
        if qtype not in ("Q4_0", "Q4_1", "Q4_K") or not isinstance(linear, torch.nn.Linear):
            continue
        cols, rows = (int(n) for n in tensor.shape[:2])  # GGUF lists the fastest-varying dimension first
        if (rows, cols) != tuple(linear.weight.shape) or cols % GROUP or rows % 16:
            continue
        codes, scale, zero = int4_codes(qtype, tensor.data, rows, cols)
        layer = None
        for order in row_orders(rows, model.config):  # llama-family GGUFs store q/k rows permuted for RoPE
            candidate = Int4Linear.from_codes(codes[order], scale[order], zero[order], linear.bias, dtype, GROUP)
            if _checks_out(candidate, linear):
                layer = candidate
                break
        if layer is None:
            continue  # leave it to the fallback
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
        imported += 1
    remaining = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    if remaining:
        quantize_model(model, fallback)
    return {"gguf_int4": imported, fallback: remaining}
