"""Load a causal LM and its tokenizer: zoo name, model folder, `.gguf` file, hub id, or an instance.

Every model comes back in eval mode, without gradients, with SDPA attention (the engine passes
custom 4D tree-attention masks), as a `LoadedModel`.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import zoo
from ..errors import ModelLoadError, SpecDecodeError
from ..runtime.calibrate import Calibration
from ..runtime.machine import cpu_flags
from ..runtime.cpu.gguf_int4 import import_gguf_int4
from ..runtime.cpu.linear import (MAX_PROBED_ROWS, check_cpu_kernels, exact_one_token_steps, exact_width,
                                  fastest_decode_dtype, fastest_draft_quantization, measured_orientation,
                                  one_row_padding_pays, tune_linear_layers)
from ..runtime.cpu.quantize import FBGEMM_MODES, check_mode, quantize_model
from ..runtime.grouped_attention import use_grouped_attention
from ..runtime.cpu.packed_linear import pack_linear_layers, packing_pays, unpack_linear_layers
from ..runtime.cpu.rowwise_attention import exact_fold_rows, fold_rows_of, runs_sdpa, use_rowwise_attention

if TYPE_CHECKING:
    import transformers

_DTYPES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16,
}
_WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json")
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class LoadedModel:
    """A ready model: eval mode, no gradients, SDPA attention, with its tokenizer."""

    model: "transformers.PreTrainedModel"
    tokenizer: "transformers.PreTrainedTokenizerBase"
    name: str
    dtype: torch.dtype
    device: torch.device
    linear_kernel: str = "standard"  # CPU matmul kernel of the linear layers (runtime/cpu/linear.py)
    quantization: str | None = None  # "int8" | "int4" | "fp16" | "w8a8" layers (runtime/cpu/quantize.py), or None
    exact_steps: bool = False  # a verification computes bit for bit what one-token steps compute (w8a8; bf16,
    #                            int8 or int4 on CPUs whose kernels allow it): speculative output equals plain
    max_exact_rows: int | None = None  # with exact_steps: the most tokens one forward may feed and keep every
    #                                    row's bits on this CPU (None: any number); the engine stays within it
    calibration: Calibration | None = None  # its measurements on this machine (runtime/calibrate.py)
    processor: Any = None  # a vision-language model's processor (images and text -> model inputs)
    prompt_encoder: Callable[[Any], Any] | None = None  # a VLM's image prompts -> EncodedPrompt (multimodal/vlm.py)


def output_vocab_size(model: torch.nn.Module) -> int:
    """Rows of the model's output layer (a quantized layer has no .weight, but out_features)."""
    head = model.get_output_embeddings()
    return int(getattr(head, "out_features", None) or head.weight.shape[0])


# ----------------------------------------------------------------------------- dtype and device


def cpu_supports_bf16() -> bool:
    """True if this CPU computes bf16 natively (AVX-512 BF16 or AMX), from its flags (runtime/machine.py;
    without /proc/cpuinfo, torch's capability string, which never promises bf16 unless it names it)."""
    return any("bf16" in flag or "amx" in flag for flag in cpu_flags())


def _cpuinfo_has_bf16(cpuinfo: str) -> bool:
    """True if a /proc/cpuinfo text's flags list a native bf16 instruction set."""
    return any(flag in cpu_flags(cpuinfo) for flag in _BF16_FLAGS)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda if available, else cpu; anything else must name a usable torch device."""
    if isinstance(device, torch.device):
        resolved = device
    elif isinstance(device, str):
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            resolved = torch.device(device)
        except (RuntimeError, ValueError):
            raise SpecDecodeError(
                f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'."
            ) from None
    else:
        raise SpecDecodeError(f"device must be a string or torch.device, not {type(device).__name__}.")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SpecDecodeError(
            f"device {str(resolved)!r} was asked for but this torch has no usable CUDA GPU; "
            "use device='cpu' or 'auto'."
        )
    return resolved


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str | torch.device = "auto") -> torch.dtype:
    """"auto" -> bf16 on a CUDA GPU or CPU with native bf16, else fp32; "fast-decode" -> the dtype whose
    one-token forward is measured fastest on this device (for drafters); or bf16/fp32/fp16 by name."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise SpecDecodeError(f"dtype {dtype} is not supported; use bfloat16, float32 or float16.")
        return dtype
    if not isinstance(dtype, str):
        raise SpecDecodeError(f"dtype must be a string or torch.dtype, not {type(dtype).__name__}.")
    if dtype == "fast-decode":
        return fast_decode_dtype(resolve_device(device))
    if dtype == "auto":
        device = resolve_device(device)
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        if device.type == "cpu" and cpu_supports_bf16():
            return torch.bfloat16
        return torch.float32
    key = dtype.lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise SpecDecodeError(
            f"unknown dtype {dtype!r}; use 'auto', 'fast-decode', 'bf16' ('bfloat16'), 'fp32' ('float32') "
            "or 'fp16' ('float16')."
        )
    return _DTYPES[key]


def fast_decode_dtype(device: torch.device) -> torch.dtype:
    """The dtype whose one-token step is fastest on this device (measured once per machine, then cached)."""
    if device.type == "cuda":
        return fastest_decode_dtype(device)
    name = Calibration.for_machine(device).get("fast_decode_dtype", lambda: str(fastest_decode_dtype(device)))
    return getattr(torch, name.removeprefix("torch."))


def draft_quantization(device: torch.device) -> str | None:
    """What quantize="auto" means for a model that only drafts: "w8a8" where its one-row product measures
    clearly faster than the fastest dtype's on this machine, else None (measured once, then cached)."""
    if device.type != "cpu":
        return None
    return Calibration.for_machine(device).get("draft_quantization", lambda: fastest_draft_quantization(device))


# ----------------------------------------------------------------------------- loading


def load_model(spec: Any, *, tokenizer: Any = None, dtype: str | torch.dtype = "auto",
               device: str | torch.device = "auto", cpu_kernels: str = "auto", quantize: str | None = None,
               group_size: int = 128, drafts_only: bool = False) -> LoadedModel:
    """Load a causal LM with its tokenizer.

    `spec`: a zoo name (`specdecode models list`), a local model folder, a `.gguf` file (converted
    once into the cache), a Hugging Face Hub id (needs internet), a `LoadedModel` (returned as is),
    or your own `PreTrainedModel` together with `tokenizer=`. `tokenizer` may be a tokenizer or a
    folder / hub id to load one from. For your own model, dtype/device "auto" keep what it has.
    `dtype`: "auto" is bf16 where the CPU computes it natively (or on a GPU), else fp32; for a CPU target,
    bf16 only where its verifications can be made exact on this CPU (calibrated once), else fp32.
    `cpu_kernels`: on CPU, "auto" times the two matmul orientations of the linear layers for few-token
    forwards on this machine once and keeps the faster (runtime/cpu/linear.py), and computes a one-token
    step's row twice where two rows measure clearly cheaper than one (fp32 here); "standard" leaves
    transformers' own. A bf16/fp16 CPU target takes the standard orientation with exact one-token steps
    where the kernels allow them (exact_one_token_steps), before any timing; "weight_first" chooses speed
    over that.
    `quantize`: "int8" or "int4" replaces every linear layer by a weight-only quantized one running on
    PyTorch's CPU kernels (runtime/cpu/quantize.py; int4 in groups of `group_size` input channels);
    "fp16" (fp16 weights) or "w8a8" (int8 weights x per-token int8 activations) by one on FBGEMM, with
    fp32 activations (the fast ones on CPUs without AVX-512). For a zoo model or a .gguf file, int4
    keeps the GGUF's own 4-bit blocks (Q4_0/Q4_1/Q4_K, groups of 32) and puts its other layers in int8
    (runtime/cpu/gguf_int4.py). Speculative output equals plain decoding of the quantized model.
    `drafts_only`: the model will only draft, so a w8a8 model keeps batched attention instead of the
    row-wise attention a verified target needs (a draft need not equal one-token steps bit for bit),
    and `quantize="auto"` is allowed: w8a8 where it measures clearly faster on this machine
    (measured once per machine), else none (a model instance you pass is not quantized by "auto").
    """
    from transformers import PreTrainedModel

    if isinstance(spec, LoadedModel):
        return spec
    check_mode(quantize, drafter=drafts_only)
    check_cpu_kernels(cpu_kernels)
    if isinstance(spec, PreTrainedModel):
        quantize = None if quantize == "auto" else quantize  # your own model stays as you built it
        return _wrap_instance(spec, tokenizer, dtype, device, cpu_kernels, quantize, group_size, drafts_only)
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError(
            f"cannot load a model from {spec!r}: pass a zoo name, a model folder, a .gguf file, "
            "a hub id, or a transformers PreTrainedModel with tokenizer=."
        )
    target_device = resolve_device(device)
    auto_weights = quantize == "auto"  # a drafter (check_mode): the weights measured fastest here, if any
    if auto_weights:
        quantize = draft_quantization(target_device)
    # FBGEMM's layers take fp32 activations: "auto" / "fast-decode" (or auto weights) mean fp32 for them
    fbgemm_default = quantize in FBGEMM_MODES and (auto_weights or dtype in ("auto", "fast-decode"))
    target_dtype = torch.float32 if fbgemm_default else resolve_dtype(dtype, target_device)
    folder, name, from_hub = _resolve_source(spec)
    model = _from_pretrained(folder, target_dtype, spec if from_hub else None)
    tok = _load_tokenizer(tokenizer if tokenizer is not None else folder)
    gguf = gguf_origin(spec) if quantize == "int4" else None
    loaded = _finish(model.to(target_device), tok, name, cpu_kernels, quantize, group_size, gguf, drafts_only)
    if (dtype == "auto" and loaded.dtype != torch.float32 and target_device.type == "cpu" and not drafts_only
            and not loaded.exact_steps and cpu_kernels != "weight_first"):
        # this CPU's bf16 products keep no row's bits (calibrated): "auto" prefers exactness, so fp32, where
        # plain and speculative decoding can differ only at exact ties of fp32 logits
        model = _from_pretrained(folder, torch.float32, spec if from_hub else None)
        loaded = _finish(model.to(target_device), tok, name, cpu_kernels, quantize, group_size, gguf, drafts_only)
    return loaded


def quantized_twin(target: LoadedModel, quantize: str) -> LoadedModel:
    """A copy of `target`'s model with `quantize`d weights ("w8a8", "int8", "int4", "fp16"), for drafting only
    (same tokenizer; costs the copy's memory). The target itself is left as it is."""
    check_mode(quantize)
    twin = copy.deepcopy(target.model)
    if twin.config._attn_implementation != "sdpa":
        twin.set_attn_implementation("sdpa")  # a draft need not equal one-token steps bit for bit
    if quantize in FBGEMM_MODES:
        twin = twin.float()  # FBGEMM's layers take fp32 activations
    return _finish(twin, target.tokenizer, f"{target.name}:{quantize}", "auto", quantize, drafts_only=True)


def _resolve_source(spec: str) -> tuple[str, str, bool]:
    """(what to pass to from_pretrained, display name, whether it is a hub id)."""
    if spec in zoo.ZOO:
        return str(zoo.prepare(spec)), spec, False
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(
                f"{path} is a file but not a .gguf file; pass a .gguf file or a model folder "
                "(config.json + *.safetensors)."
            )
        return str(zoo.prepare_gguf_file(path)), path.stem, False
    if path.is_dir():
        _check_folder(path)
        return str(path), path.name, False
    if _looks_like_path(spec):
        raise ModelLoadError(f"no such file or folder: {path}. Check the path.")
    close = difflib.get_close_matches(spec.lower(), list(zoo.ZOO), n=1, cutoff=0.75)
    if "/" not in spec and close:  # a mistyped zoo name: fail now, not after network retries
        raise ModelLoadError(
            f"unknown model {spec!r}: did you mean the zoo model {close[0]!r}? "
            f"Known zoo models: {', '.join(zoo.ZOO)}."
        )
    return spec, spec, True


def gguf_origin(spec: str) -> Path | None:
    """The GGUF file a zoo name or a .gguf path was converted from (None for other sources)."""
    if spec in zoo.ZOO:
        return zoo.source_gguf(spec)
    path = Path(spec).expanduser()
    return path if path.is_file() and path.suffix.lower() == ".gguf" else None


def _looks_like_path(spec: str) -> bool:
    """A hub id is `name` or `owner/name`; anything else is meant as a path."""
    if spec.startswith((".", "/", "~")) or spec.lower().endswith(".gguf"):
        return True
    return spec.count("/") > 1 or "\\" in spec


def _check_folder(path: Path) -> None:
    if not os.access(path, os.R_OK | os.X_OK):
        raise ModelLoadError(f"cannot read the folder {path}; check its permissions.")
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{path} is not a model folder: it has no config.json. A model folder holds config.json "
            "and weights (*.safetensors) as written by save_pretrained; for a GGUF pass the .gguf file."
        )
    if not any(next(path.glob(pattern), None) for pattern in _WEIGHT_FILES):
        raise ModelLoadError(
            f"{path} has config.json but no weights (*.safetensors or *.bin); copy the weight "
            "files into it or save the model again with save_pretrained."
        )


def _from_pretrained(source: str, dtype: torch.dtype, hub_id: str | None):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation="sdpa")
    except Exception as e:  # noqa: BLE001 - one clear message instead of a transformers traceback
        reason = _first_line(e)
        if hub_id is not None and isinstance(e, OSError):  # not found, offline, no network
            raise ModelLoadError(
                f"could not load {hub_id!r}: it is not a zoo name, not a local file or folder, and it "
                f"could not be downloaded from the Hugging Face Hub ({reason}). Without internet, use "
                f"a zoo name ({', '.join(zoo.ZOO)}; see `specdecode models list`) or a local "
                "folder / .gguf path."
            ) from e
        raise ModelLoadError(
            f"could not load the model {source}: {reason}. The weights or config.json are "
            "corrupt or incomplete, or the architecture is not a causal LM transformers knows."
        ) from e


def _load_tokenizer(tokenizer: Any) -> "transformers.PreTrainedTokenizerBase":
    from transformers import AutoTokenizer, PreTrainedTokenizerBase

    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    if isinstance(tokenizer, os.PathLike):
        tokenizer = os.fspath(tokenizer)
    if not isinstance(tokenizer, str):
        raise ModelLoadError(
            "tokenizer must be a transformers tokenizer or a folder / hub id, "
            f"not {type(tokenizer).__name__}."
        )
    try:
        return AutoTokenizer.from_pretrained(tokenizer)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(
            f"could not load a tokenizer from {tokenizer}: {_first_line(e)}. "
            "Pass tokenizer= (a tokenizer object or the folder that holds tokenizer.json)."
        ) from e


def _wrap_instance(model, tokenizer, dtype, device, cpu_kernels: str, quantize: str | None,
                   group_size: int, drafts_only: bool) -> LoadedModel:
    """A user's own model: check the tokenizer, cast/move only where asked, switch to SDPA."""
    if tokenizer is None:
        raise ModelLoadError(
            f"a model instance ({type(model).__name__}) needs its tokenizer: "
            "load_model(model, tokenizer=tokenizer)."
        )
    tok = _load_tokenizer(tokenizer)
    unpack_linear_layers(model)  # a model this function packed before: dense again, to be moved, cast, probed
    if device != "auto":
        model = model.to(resolve_device(device))
    if dtype != "auto":
        model = model.to(resolve_dtype(dtype, model.device))
    if not runs_sdpa(model.config._attn_implementation):  # row-wise is kept: already exact (w8a8, bf16)
        try:
            model.set_attn_implementation("sdpa")
        except (ValueError, ImportError) as e:
            raise ModelLoadError(
                f"{type(model).__name__} cannot use SDPA attention ({_first_line(e)}); the engine "
                "needs it for tree-attention masks. Use a model class that supports SDPA."
            ) from e
    name = getattr(model.config, "name_or_path", "") or type(model).__name__
    return _finish(model, tok, name, cpu_kernels, quantize, group_size, drafts_only=drafts_only)


def _finish(model, tokenizer, name: str, cpu_kernels: str, quantize: str | None = None,
            group_size: int = 128, gguf: Path | None = None, drafts_only: bool = False) -> LoadedModel:
    vocab = model.get_input_embeddings().num_embeddings
    if tokenizer is not None and len(tokenizer) > vocab:
        raise ModelLoadError(
            f"the tokenizer has {len(tokenizer)} tokens but the model {name!r} embeds only {vocab}; "
            "pass the tokenizer that belongs to this model."
        )
    model.eval()
    model.requires_grad_(False)
    calibration = Calibration.for_model(model, quantization=quantize, drafts_only=drafts_only)
    if quantize == "int4" and gguf is not None and model.device.type == "cpu":
        import_gguf_int4(model, gguf)  # the GGUF's own 4-bit blocks; other layers int8
    elif quantize is not None:
        quantize_model(model, quantize, group_size, drafts_only=drafts_only)
    exact = quantize == "w8a8" and not drafts_only  # quantize_model switched it to row-wise attention
    if model.config._attn_implementation == "sdpa":  # an exact target switches to row-wise attention below
        use_grouped_attention(model)  # several tokens' attention without copying the cache per query head
    width, kernel = None, None
    if (quantize in (None, "int8", "int4") and not drafts_only and model.device.type == "cpu"
            and model.dtype in (torch.bfloat16, torch.float16) and cpu_kernels != "weight_first"):
        # a reduced-precision target (weight-only int8/int4 compute in it too): its logits tie often, so
        # rounding must not differ between steps. Exactness comes before the orientation's timing.
        tune_linear_layers(model, "standard")  # plain nn.Linear again (a re-wrapped model may carry others)
        width = exact_one_token_steps(model, lambda layers: calibration.get("exact_width", lambda: exact_width(layers)))
        exact = width > 0
        kernel = ("padded_row" if any(isinstance(m, torch.nn.Linear) for m in model.modules()) else "quantized"
                  ) if exact else None
        width = width if exact and width < MAX_PROBED_ROWS else None
    if exact and fold_rows_of(model.config._attn_implementation):  # how many tokens may share an attention call
        use_rowwise_attention(model, calibration.get("attention_fold_rows", lambda: exact_fold_rows(model)))
    if kernel is None:
        auto = cpu_kernels == "auto" and model.device.type == "cpu"  # chosen once per model and machine
        orientation = calibration.get("linear_orientation", lambda: measured_orientation(model)) if auto else cpu_kernels
        kernel = tune_linear_layers(model, orientation)
        if auto and calibration.get(f"pad_one_row:{kernel}", lambda: one_row_padding_pays(model)):  # the row twice
            kernel = tune_linear_layers(model, kernel, pad_one_row=True) + ", one row padded"
    if cpu_kernels == "auto" and model.device.type == "cpu" and calibration.get("packed_linear",
                                                                               lambda: packing_pays(model)):
        kernel = f"{kernel}, packed {pack_linear_layers(model)}"  # the same products, weights reordered once
    return LoadedModel(model, tokenizer, name=name, dtype=model.dtype, device=model.device, linear_kernel=kernel,
                       quantization=quantize, exact_steps=exact, max_exact_rows=width, calibration=calibration)


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"

