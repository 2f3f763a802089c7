"""A GGUF's own 4-bit blocks as int4 codes (runtime/cpu/gguf_int4.py): they dequantize as gguf's reference does,
and a zoo model loaded in int4 keeps every published block and decodes speculatively as it does plainly."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from specdecode import SpeculativeGenerator, load_model
from specdecode.drafters import ModelDrafter
from specdecode.runtime.cpu.gguf_int4 import int4_codes
from specdecode.runtime.cpu.quantize import Int4Linear


@pytest.mark.parametrize("qtype, block_bytes, scale_bytes", [("Q4_0", 18, 2), ("Q4_1", 20, 4), ("Q4_K", 144, 4)])
def test_gguf_4bit_blocks_become_codes_that_dequantize_like_gguf(qtype, block_bytes, scale_bytes):
    rng = np.random.default_rng(0)
    rows, cols = 16, 512  # the kernel packs rows in sets of 16
    blocks = rng.integers(0, 256, size=(rows * cols // (256 if qtype == "Q4_K" else 32), block_bytes), dtype=np.uint8)
    halves = rng.uniform(-0.05, 0.05, size=(len(blocks), scale_bytes // 2)).astype(np.float16)
    blocks[:, :scale_bytes] = halves.view(np.uint8)  # finite fp16 d (and m / dmin)
    expected = gguf.quants.dequantize(blocks.reshape(rows, -1), getattr(gguf.GGMLQuantizationType, qtype))
    codes, scale, zero = int4_codes(qtype, blocks, rows, cols)
    ours = ((codes.float() - 8).reshape(rows, -1, 32) * scale[..., None] + zero[..., None]).reshape(rows, cols)
    assert torch.allclose(ours, torch.from_numpy(expected).float(), atol=1e-5)
    layer = Int4Linear.from_codes(codes, scale, zero, None, torch.float32, group_size=32)
    x = torch.randn(3, cols, generator=torch.Generator().manual_seed(1))
    reference = x @ torch.from_numpy(expected).float().t()  # Q4_K's scales reach outputs of ~10^3 here
    assert torch.allclose(layer(x), reference, rtol=0, atol=1e-5 * reference.abs().max().item())  # fp32 rounding


@pytest.mark.zoo
def test_int4_keeps_smollm2_gguf_blocks_and_stays_lossless():
    target = load_model("smollm2-135m-instruct", device="cpu", dtype="fp32", quantize="int4")
    int4 = [m for m in target.model.modules() if isinstance(m, Int4Linear)]
    assert len(int4) == 30 * 7 and all(m.group_size == 32 for m in int4)  # every Q4_1 layer, as published
    prompt = [{"role": "user", "content": "List three prime numbers and explain why they are prime."}]
    # one generator: plain and speculative decoding share the prefill (fp32 int4 products are slow here)
    gen = SpeculativeGenerator(target, drafter=ModelDrafter(target, k=3, confidence=0), cost_model=None)
    plain = gen.generate(prompt, max_new_tokens=24, speculative=False)
    out = gen.generate(prompt, max_new_tokens=24)
    assert out.token_ids == plain.token_ids and out.stats.drafted_tokens > 0
