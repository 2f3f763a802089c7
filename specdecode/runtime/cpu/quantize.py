"""Quantized linear layers on PyTorch's own CPU kernels: weight-only int8 / int4, fp16 weights, W8A8.

A one-token forward of a small LM on a CPU is bound by the bytes of weights it reads; int8 weights
read 4x fewer bytes than fp32, int4 8x fewer. PyTorch ships the kernels:
`torch._weight_int8pack_mm` (int8 weights, one scale per output channel) and
`aten._weight_int4pack_mm_for_cpu` (4-bit weights, a scale and a zero point per group of
`group_size` input channels). Activations stay in the model's dtype (fp32 or bf16).

On CPUs without AVX-512 those kernels are slow with fp32 activations; FBGEMM (in every x86 build of
PyTorch) is not: `"fp16"` keeps the weights in fp16 and computes in fp32 (half the bytes, the same
outputs to ~1e-4), `"w8a8"` multiplies int8 weights by int8 activations (a quarter of the bytes, and
integer multiply-adds). Forward costs by weights, side by side: docs/benchmarks.md (EPYC AVX2,
2026-11-26, forward cost by target weights); on this machine: `specdecode profile --quantize MODE`.

Lossless stays defined relative to the model actually loaded: plain and speculative decoding both
run these layers, so speculative output equals plain decoding of the quantized model.

    int8: w ~= q * scale[out]                         q in [-127, 127]
    int4: w ~= (q - 8) * scale[g, out] + zero[g, out]  q in [0, 15], g = in_index // group_size
    w8a8: x[r] ~= a[r] * x_scale[r] (a in [-63, 63]), w ~= q * scale[out]; y[r] = x_scale[r] * (a[r] @ q^T) * scale
"""

from __future__ import annotations

import warnings

import torch

from ...errors import SpecDecodeError
from .fusion import fuse_projections
from .rowwise_attention import use_rowwise_attention

MODES = ("int8", "int4", "fp16", "w8a8")
FBGEMM_MODES = ("fp16", "w8a8")  # fp32 activations, FBGEMM kernels (x86)
_ROW_CODE_MAX = 63  # 7-bit activation codes: AVX2's u8 x s8 pair sums (2 * 127 * 127) never saturate int16
INT4_GROUP_SIZES = (32, 64, 128, 256)


def channel_scales(weight: torch.Tensor) -> torch.Tensor:
    """weight [out, in] -> the int8 scale of each output channel [out]: its largest |w| maps to 127."""
    return weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0


class Int8Linear(torch.nn.Module):
    """y = x @ (q * scale)^T + bias with int8 q [out, in] and a scale per output channel."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        weight = weight.detach().float()
        scale = channel_scales(weight)  # [out]
        self.register_buffer("weight_int8", torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(dtype))  # [out]
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))

    def dequantized(self) -> torch.Tensor:
        """The weight these layers compute with, [out, in] in fp32 (for tests and checks)."""
        return self.weight_int8.float() * self.scale.float()[:, None]

    def select_rows(self, rows: torch.Tensor) -> Int8Linear:
        """A layer computing only the output channels `rows` [r] (a pruned drafter head)."""
        weight = self.weight_int8[rows].float() * self.scale[rows].float()[:, None]  # [r, in]; same codes again
        return Int8Linear(weight, None if self.bias is None else self.bias[rows], self.scale.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # [rows, in]
        if flat.dtype != self.scale.dtype:
            flat = flat.to(self.scale.dtype)
        out = torch._weight_int8pack_mm(flat, self.weight_int8, self.scale)  # [rows, out]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


class Int4Linear(torch.nn.Module):
    """y = x @ w^T + bias with w's 4-bit codes packed for the CPU kernel, asymmetric per group."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, group_size: int = 128):
        super().__init__()
        out_features, in_features = weight.shape
        check_int4_shape(in_features, group_size)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        codes, scale, zero = quantize_int4(weight.detach().float(), group_size)
        self._store(codes, scale, zero, bias, dtype)

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bias: torch.Tensor | None,
                   dtype: torch.dtype, group_size: int) -> Int4Linear:
        """From existing 4-bit codes [out, in] (0..15) with w = (q - 8) * scale + zero, scale and zero
        [out, in / group_size] (e.g. a GGUF's own blocks)."""
        layer = cls.__new__(cls)
        torch.nn.Module.__init__(layer)
        layer.out_features, layer.in_features = codes.shape
        check_int4_shape(layer.in_features, group_size)
        layer.group_size = group_size
        layer._store(codes, scale, zero, bias, dtype)
        return layer

    def _store(self, codes, scale, zero, bias, dtype) -> None:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
        scales_and_zeros = torch.stack([scale.t(), zero.t()], dim=-1).to(dtype).contiguous()  # [groups, out, 2]
        self.register_buffer("weight_int4", packed)  # [out, in / 2] uint8
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype))

    def dequantized(self) -> torch.Tensor:
        """The weight this layer computes with, [out, in] in fp32: the kernel applied to the identity."""
        eye = torch.eye(self.in_features, dtype=self.scales_and_zeros.dtype)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.weight_int4, self.group_size,
                                                          self.scales_and_zeros).t().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # [rows, in]
        if flat.dtype != self.scales_and_zeros.dtype:
            flat = flat.to(self.scales_and_zeros.dtype)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.weight_int4, self.group_size,
                                                         self.scales_and_zeros)  # [rows, out]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


class Fp16Linear(torch.nn.Module):
    """y = x @ w^T + bias with w stored in fp16 in FBGEMM's packed layout; fp32 activations and sums."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        bias = None if bias is None else bias.detach().float().contiguous()
        self.packed = torch.ops.quantized.linear_prepack_fp16(weight.detach().float().contiguous(), bias)
        self._weight_fp16: torch.Tensor | None = None  # unpacked on the first select_rows, then kept
        self._bias: torch.Tensor | None = None

    def dequantized(self) -> torch.Tensor:
        """The weight this layer computes with, [out, in] in fp32."""
        return torch.ops.quantized.linear_unpack_fp16(self.packed)[0].float()

    def select_rows(self, rows: torch.Tensor) -> Fp16Linear:
        """A layer computing only the output channels `rows` [r] (a pruned drafter head)."""
        weight, bias = self._unpacked()
        return Fp16Linear(weight[rows].float(), None if bias is None else bias[rows])

    def _unpacked(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fp16 weight [out, in] and bias, unpacked from FBGEMM's layout once and kept: unpacking is
        slow (seconds for a large vocabulary's output layer), selecting rows from it is not."""
        if self._weight_fp16 is None:
            weight, bias = torch.ops.quantized.linear_unpack_fp16(self.packed)
            self._weight_fp16, self._bias = weight.half(), bias
        return self._weight_fp16, self._bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float()  # [rows, in]
        out = torch.ops.quantized.linear_dynamic_fp16(flat, self.packed)  # [rows, out]
        return out.reshape(*x.shape[:-1], self.out_features)


class RowInt8Linear(torch.nn.Module):
    """W8A8: int8 weights (a scale per output channel) times int8 activations (a scale per row).

    Every row (token) is quantized on its own, so its result never depends on the other rows of the
    batch: a 16-token verification gives each token, bit for bit, what a one-token step gives it
    (the integer sums are exact). That is what keeps speculative decoding of this model lossless; a
    per-tensor activation scale (torch's dynamic quantization) would let draft tokens change it.
    quantize_model also switches a w8a8 model to row-wise attention (rowwise_attention.py), whose
    rounding does not depend on the batch either.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        weight = weight.detach().float()
        scale = channel_scales(weight)  # [out]
        with warnings.catch_warnings():  # torch marks its quantized tensors deprecated; FBGEMM packs from one
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(weight, scale.double(), torch.zeros_like(scale, dtype=torch.long),
                                                 0, torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(qweight, None)
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        self._codes: torch.Tensor | None = None  # unpacked on the first select_rows, then kept
        self._scales: torch.Tensor | None = None

    def dequantized(self) -> torch.Tensor:
        """The weight this layer computes with, [out, in] in fp32."""
        return torch.ops.quantized.linear_unpack(self.packed)[0].dequantize()

    def select_rows(self, rows: torch.Tensor) -> RowInt8Linear:
        """A layer computing only the output channels `rows` [r] (a pruned drafter head)."""
        codes, scales = self._unpacked()
        weight = codes[rows].float() * scales[rows][:, None]  # [r, in]; requantizes to the same codes
        return RowInt8Linear(weight, None if self.bias is None else self.bias[rows])

    def _unpacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The int8 codes [out, in] and channel scales [out], unpacked from FBGEMM's layout once and kept:
        unpacking is slow (seconds for a large vocabulary's output layer), selecting rows is not."""
        if self._codes is None:
            qweight = torch.ops.quantized.linear_unpack(self.packed)[0]  # qint8, a scale per channel
            self._codes, self._scales = qweight.int_repr(), qweight.q_per_channel_scales().float()
        return self._codes, self._scales

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float()  # [rows, in]
        row_scale = (flat.abs().amax(dim=1, keepdim=True) / _ROW_CODE_MAX).clamp(min=1e-12)  # [rows, 1]
        codes = torch.round(flat / row_scale)  # [rows, in], whole numbers in -63..63
        # the kernel reads codes + 64 as uint8 (scale 1, zero point 64) and returns sum(code * q) * scale
        out = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
            codes, 1.0, _ROW_CODE_MAX + 1, self.packed) * row_scale  # [rows, out]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def check_mode(mode: str | None, *, drafter: bool = False) -> None:
    """Fail before loading anything when `mode` is not a quantization this module provides ("auto":
    the measured fastest, for models that only draft; linear.fastest_draft_quantization)."""
    if mode == "auto":
        if not drafter:
            raise SpecDecodeError("quantize='auto' is for drafter models only (their weights never change the "
                                  "output); a target's quantization changes what it generates, so name it: "
                                  f"one of {', '.join(MODES)}, or None.")
        return
    if mode is not None and mode not in MODES:
        raise SpecDecodeError(f"unknown quantization {mode!r}; use one of {', '.join(MODES)} (or None)"
                              f"{' or auto' if drafter else ''}.")


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """weight [out, in] -> codes [out, in] in 0..15, scale and zero [out, in / group_size], with
    w ~= (q - 8) * scale + zero (each group's min..max range in 15 steps)."""
    out_features, in_features = weight.shape
    groups = weight.reshape(out_features, in_features // group_size, group_size)  # [out, g, size]
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)  # [out, g]
    scale = ((high - low) / 15).clamp(min=1e-12)
    codes = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15)
    zero = low + 8 * scale
    return codes.reshape(out_features, in_features).to(torch.int32), scale, zero


def check_int4_shape(in_features: int, group_size: int) -> None:
    if group_size not in INT4_GROUP_SIZES:
        raise SpecDecodeError(f"int4 group size must be one of {INT4_GROUP_SIZES}, got {group_size}.")
    if in_features % group_size:
        raise SpecDecodeError(f"int4 group size {group_size} does not divide the layer width {in_features}; "
                              f"choose a group size that divides it (one of {INT4_GROUP_SIZES}) or use int8.")


def int4_kernel_available() -> bool:
    try:
        codes = torch.zeros(16, 32, dtype=torch.int32)
        torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        return True
    except (RuntimeError, AttributeError):
        return False


def fbgemm_available() -> bool:
    """True if this PyTorch build has FBGEMM (x86 builds) and uses it for quantized linear layers."""
    return "fbgemm" in torch.backends.quantized.supported_engines and \
        torch.backends.quantized.engine in ("x86", "fbgemm")


def quantize_model(model: torch.nn.Module, mode: str, group_size: int = 128, drafts_only: bool = False) -> int:
    """Replace the model's linear layers (the output layer included) by Int8Linear / Int4Linear /
    Fp16Linear / RowInt8Linear in place; returns how many were replaced. CPU only: on CUDA use the
    GPU's own quantization. A w8a8 model switches to row-wise attention so that every token's result is
    independent of the batch, as a verified target needs; one that only drafts (`drafts_only`) does not."""
    check_mode(mode)
    parameter = next(model.parameters(), None)
    if parameter is None:
        raise SpecDecodeError("the model has no parameters to quantize.")
    if parameter.device.type != "cpu":
        raise SpecDecodeError(f"quantize={mode!r} uses PyTorch's CPU kernels; this model is on "
                              f"{parameter.device.type}. Load it on the CPU, or quantize=None on a GPU.")
    dtype = parameter.dtype
    if mode in FBGEMM_MODES and dtype != torch.float32:
        raise SpecDecodeError(f"quantize={mode!r} computes with fp32 activations; the model is {dtype}. "
                              "Load it with dtype='fp32' (or 'auto'), or use quantize='int8' for a bf16 model.")
    if mode in FBGEMM_MODES and not fbgemm_available():
        raise SpecDecodeError(f"quantize={mode!r} needs FBGEMM, which this PyTorch build (or its quantized "
                              f"engine {torch.backends.quantized.engine!r}) does not provide (x86 builds do); "
                              "use quantize='int8'.")
    if dtype not in (torch.float32, torch.bfloat16):
        raise SpecDecodeError(f"quantization needs an fp32 or bf16 model (activations in that dtype), not {dtype}.")
    if mode == "int4" and not int4_kernel_available():
        raise SpecDecodeError("this PyTorch build has no CPU int4 kernel (_weight_int4pack_mm_for_cpu); "
                              "use quantize='int8'.")
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    if not targets:
        raise SpecDecodeError(f"{type(model).__name__} has no linear layers to quantize.")
    if mode == "int4":
        if group_size not in INT4_GROUP_SIZES:
            raise SpecDecodeError(f"int4 group size must be one of {INT4_GROUP_SIZES}, got {group_size}.")
        for name, module in targets:
            if module.in_features % group_size:
                raise SpecDecodeError(f"int4 group size {group_size} does not divide {name}'s width "
                                      f"{module.in_features}; pick a group size dividing it, or use int8.")
            if module.out_features % 16:
                raise SpecDecodeError(f"the CPU int4 kernel packs output rows in sets of 16; {name} has "
                                      f"{module.out_features}. Use int8 for this model.")
    if fuse_projections(model):  # one product per shared input (fusion.py), quantized like any layer
        targets = [(name, module) for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    for name, module in targets:
        with torch.no_grad():
            if mode == "int8":
                layer = Int8Linear(module.weight, module.bias, dtype)
            elif mode == "fp16":
                layer = Fp16Linear(module.weight, module.bias)
            elif mode == "w8a8":
                layer = RowInt8Linear(module.weight, module.bias)
            else:
                layer = Int4Linear(module.weight, module.bias, dtype, group_size)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    if mode == "w8a8" and not drafts_only and hasattr(model, "set_attn_implementation"):
        use_rowwise_attention(model)  # batched attention's rounding would move w8a8's activation codes
    return len(targets)
