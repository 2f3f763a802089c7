"""Quantized linear layers (weight-only int8 / int4, FBGEMM fp16 / w8a8): kernels vs a reference
dequantised matmul, batch invariance, the loader, speculative exactness on quantized tiny models and
on SmolLM2, and bad input."""

# cost_model=None: these tests verify every draft the drafters make; the cost model (test_costs.py)
# would rightly skip drafts of drafters as slow as these small targets.

from __future__ import annotations

from functools import partial

import pytest
import torch
from tiny import (RandomDrafter, cpu_model, first_token_total_variation, hf_greedy, loaded, random_prompt,
                  repetitive_prompt, tiny_model, tiny_tokenizer)

import specdecode.models.load
from specdecode import SpeculativeGenerator, load_model
from specdecode.runtime.runner import SDPABackend
from specdecode.bench.methods import DraftModels
from specdecode.runtime.cache import KVCache
from specdecode.drafters.registry import DrafterOptions, make_drafter
from specdecode.drafters import LookupDrafter, ModelDrafter, RetrievalDrafter
from specdecode.errors import SpecDecodeError
from specdecode.runtime.cpu.linear import fastest_draft_quantization
from specdecode.runtime.cpu import quantize as quantize_module
from specdecode.runtime.grouped_attention import GROUPED
from specdecode.runtime.cpu.rowwise_attention import fold_rows_of
from specdecode.runtime.cpu.quantize import (Fp16Linear, Int4Linear, Int8Linear, RowInt8Linear, fbgemm_available,
                                             quantize_int4, quantize_model)

GROUP = 32  # the tiny models are 64 wide
load_cpu = partial(load_model, device="cpu")  # quantization uses the CPU's kernels (a GPU model is refused)
MODES = ["int8", "int4", "fp16", "w8a8"]
QUANTIZED = (Int8Linear, Int4Linear, Fp16Linear, RowInt8Linear)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_layer_equals_its_dequantized_matmul(dtype):
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 96)
    layer = Int8Linear(linear.weight, linear.bias, dtype)
    x = torch.randn(3, 5, 256)
    reference = x @ (layer.weight_int8.float() * layer.scale.float()[:, None]).t() + linear.bias.to(dtype).float()
    tolerance = 1e-4 if dtype == torch.float32 else 0.1
    assert torch.allclose(layer(x.to(dtype)).float(), reference, atol=tolerance)
    if dtype == torch.float32:  # one scale per row: within half a step of the float weights
        assert (layer.dequantized() - linear.weight).abs().max() <= layer.scale.max() / 2 + 1e-6


@pytest.mark.parametrize("group_size", [32, 128])
def test_int4_layer_equals_its_dequantized_matmul(group_size):
    torch.manual_seed(1)
    linear = torch.nn.Linear(256, 64, bias=False)
    layer = Int4Linear(linear.weight, None, torch.float32, group_size)
    codes, scale, zero = quantize_int4(linear.weight.float(), group_size)
    expected = ((codes.float() - 8).reshape(64, -1, group_size) * scale[..., None] + zero[..., None]).reshape(64, 256)
    assert torch.allclose(layer.dequantized(), expected, atol=1e-5)
    x = torch.randn(7, 256)
    assert torch.allclose(layer(x), x @ expected.t(), atol=1e-4)
    step = scale.max()
    assert (expected - linear.weight).abs().max() <= step / 2 + 1e-5


def test_int4_from_existing_codes_keeps_them():
    torch.manual_seed(0)
    codes = torch.randint(0, 16, (32, 64), dtype=torch.int32)
    scale, zero = torch.rand(32, 2) * 0.1, torch.randn(32, 2) * 0.1
    layer = Int4Linear.from_codes(codes, scale, zero, None, torch.float32, group_size=32)
    expected = ((codes.float() - 8).reshape(32, 2, 32) * scale[..., None] + zero[..., None]).reshape(32, 64)
    assert torch.allclose(layer.dequantized(), expected, atol=1e-6)


def test_fp16_layer_equals_its_fp16_weights_matmul():
    torch.manual_seed(2)
    linear = torch.nn.Linear(256, 96)
    layer = Fp16Linear(linear.weight, linear.bias)
    assert torch.equal(layer.dequantized(), linear.weight.half().float())  # the weights, rounded to fp16
    x = torch.randn(3, 5, 256)
    reference = x @ linear.weight.half().float().t() + linear.bias
    assert torch.allclose(layer(x), reference, atol=1e-4)


def test_w8a8_layer_equals_its_reference_matmul():
    torch.manual_seed(3)
    linear = torch.nn.Linear(256, 96)
    layer = RowInt8Linear(linear.weight, linear.bias)
    weight = layer.dequantized()  # [out, in]
    weight_scale = linear.weight.abs().amax(dim=1) / 127
    assert (weight - linear.weight).abs().max() <= weight_scale.max() / 2 + 1e-6  # within half a step
    x = torch.randn(4, 256) * torch.tensor([[1.0], [10.0], [0.01], [300.0]])  # rows of very different sizes
    row_scale = x.abs().amax(dim=1, keepdim=True) / 63
    codes = torch.round(x / row_scale)  # each row on its own 7-bit grid
    reference = (codes * row_scale) @ weight.t() + linear.bias
    assert torch.allclose(layer(x), reference, rtol=1e-5, atol=1e-5 * reference.abs().max().item())
    error = (layer(x) - linear(x)).abs().amax(dim=1)  # [rows]: every row within 5% of its own size
    assert (error <= 0.05 * linear(x).abs().amax(dim=1)).all()


def test_w8a8_rows_do_not_depend_on_the_rest_of_the_batch():
    """What keeps speculative decoding of a w8a8 model lossless: a verified token gets, bit for bit, what
    a one-token step would give it, whatever the draft tokens next to it (a per-tensor activation scale
    would not). fp16 and fp32 layers differ between batch sizes only by float rounding (~1e-7)."""
    torch.manual_seed(4)
    linear = torch.nn.Linear(512, 320)
    layer = RowInt8Linear(linear.weight, linear.bias)
    x = torch.randn(16, 512)
    x[5] *= 1000  # an outlier token must not change its neighbours' results
    batch = layer(x)
    for row in range(16):
        assert torch.equal(batch[row:row + 1], layer(x[row:row + 1])), f"row {row} depends on the batch"
    fp16 = Fp16Linear(linear.weight, linear.bias)
    rows = torch.cat([fp16(x[row:row + 1]) for row in range(16)])
    assert torch.allclose(fp16(x), rows, rtol=1e-5, atol=1e-5 * rows.abs().max().item())


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_w8a8_model_verifies_a_tree_exactly_as_it_decodes_one_token_at_a_time(arch):
    """Row-wise attention: a verification forward (causal chain or tree mask) gives every token the
    logits of a one-token step over the same keys, bit for bit (batched SDPA would differ by rounding,
    which w8a8's activation grid turns into different tokens)."""
    model = cpu_model(arch, seed=2)
    quantize_model(model, "w8a8")
    assert model.config._attn_implementation == "specdecode_rowwise"
    backend, prompt = SDPABackend(), torch.tensor(random_prompt(7))
    fed = torch.tensor([11, 12, 13, 14, 15, 16, 17, 18])  # with 8 fed tokens plain SDPA's rounding differs
    # a tree: 11 -> 12 -> ... -> 17 (a chain of 7) and 11 -> 18
    tree_mask = torch.ones(8, 8, dtype=torch.bool).tril()
    tree_mask[7, 1:7] = False
    with torch.inference_mode():
        cache = KVCache(model)
        backend.forward(model, cache, prompt, torch.arange(12))
        chain = backend.forward(model, cache, fed, torch.arange(12, 20))  # [8, vocab], causal
        cache.crop(12)
        tree = backend.forward(model, cache, fed, torch.tensor([12, 13, 14, 15, 16, 17, 18, 13]), tree_mask=tree_mask)
        for path in (list(range(8)), list(range(7)), [0, 7]):  # the chain; each root-to-leaf path of the tree
            cache.crop(12)
            steps = torch.cat([backend.forward(model, cache, fed[i:i + 1], torch.tensor([12 + depth]))
                               for depth, i in enumerate(path)])  # one token per forward
            assert torch.equal((chain if len(path) == 8 else tree)[path], steps), f"path {path}"


@pytest.mark.parametrize("mode", ["int8", "fp16", "w8a8"])
def test_a_quantized_output_layer_selects_rows(mode):
    """What a pruned drafter head computes: the chosen rows of the quantized layer's output."""
    model = cpu_model("llama", seed=4)
    quantize_model(model, mode)
    head = model.lm_head
    rows = torch.tensor([0, 5, 17, 64, 95])
    hidden = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(head.select_rows(rows)(hidden), head(hidden)[:, rows], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("mode", ["int8", "w8a8"])
def test_a_quantized_drafter_with_a_pruned_head_stays_lossless(mode):
    target = cpu_model("llama", seed=0)
    drafter_model = cpu_model("llama", seed=0)  # the same weights, quantized: drafts mostly right
    quantize_model(drafter_model, mode, drafts_only=True)
    drafter = ModelDrafter(loaded(drafter_model), k=4, confidence=0, draft_vocab=40)
    gen = SpeculativeGenerator(loaded(target), drafter=drafter, cost_model=None)
    for seed in range(3):
        prompt = random_prompt(seed)
        out = gen.generate(prompt, max_new_tokens=24)
        assert out.token_ids == hf_greedy(target, prompt, 24)
        assert drafter.head is not None and drafter.head.size == 40
    assert out.stats.accepted_tokens > 0  # the pruned quantized drafter still drafts accepted tokens


def test_sampling_with_a_pruned_w8a8_drafter_keeps_the_target_distribution():
    """Drafters are w8a8 by default on CPUs where it is faster ("auto"): their draft_probs come from
    quantized weights and a pruned head (zero outside the kept ids), which the acceptance rule must
    absorb. First sampled token vs the fp32 target's softmax (vocab 16, 4000 samples)."""
    model = cpu_model("llama", seed=0, vocab=16)
    drafter_model = cpu_model("llama", seed=0, vocab=16)
    quantize_model(drafter_model, "w8a8", drafts_only=True)
    prompt = random_prompt(7, vocab=16)
    drafter = ModelDrafter(loaded(drafter_model), k=2, confidence=0, draft_vocab=8)
    gen = SpeculativeGenerator(loaded(model), drafter=drafter, cost_model=None)
    assert first_token_total_variation(gen, model, prompt) < 0.05  # expected TV ~0.02
    assert drafter.head is not None and drafter.head.size == 8


def test_a_w8a8_drafter_keeps_batched_attention():
    """Row-wise attention costs time and only a verified target needs it: drafts need not be exact (a drafter
    attends batched, its query heads grouped: runtime/grouped_attention.py)."""
    drafter = load_cpu(cpu_model("llama", seed=2), tokenizer=tiny_tokenizer(), quantize="w8a8", drafts_only=True)
    assert drafter.model.config._attn_implementation == GROUPED
    assert isinstance(drafter.model.lm_head, RowInt8Linear)
    target = load_cpu(cpu_model("llama", seed=2), tokenizer=tiny_tokenizer(), quantize="w8a8")
    assert fold_rows_of(target.model.config._attn_implementation)  # row-wise, however many tokens per call


def test_w8a8_sampling_through_a_verification_follows_the_target_distribution():
    """The second token is sampled from a verification forward (the first from the prefill): with a
    mostly wrong drafter its distribution, given the first token, is the w8a8 target's softmax."""
    model = cpu_model("llama", seed=0, vocab=16)
    quantize_model(model, "w8a8")
    drafter_model = cpu_model("llama", seed=3, vocab=16)
    prompt = random_prompt(7, vocab=16)
    gen = SpeculativeGenerator(loaded(model), drafter=ModelDrafter(loaded(drafter_model), k=2, confidence=0),
                               cost_model=None)
    with torch.no_grad():
        first = int(model(torch.tensor([prompt])).logits[0, -1].argmax())
        target = model(torch.tensor([prompt + [first]])).logits[0, -1].softmax(-1)  # [vocab]
    counts = torch.zeros_like(target)
    for seed in range(2000):  # the first token is the likeliest one ~70% of the time
        tokens = gen.generate(prompt, max_new_tokens=2, temperature=1.0, seed=seed).token_ids
        if tokens[0] == first:
            counts[tokens[1]] += 1
    assert counts.sum() >= 1000  # enough samples for the bound below
    assert 0.5 * float((counts / counts.sum() - target).abs().sum()) < 0.1  # measured ~0.04


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    model = cpu_model("llama", seed=0)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("mode", MODES)
def test_loader_quantizes_every_linear_layer(model_dir, mode):
    target = load_cpu(model_dir, dtype="fp32" if mode in ("int8", "int4") else "auto", quantize=mode,
                      group_size=GROUP)
    assert target.quantization == mode and target.dtype == torch.float32
    layers = [m for m in target.model.modules() if isinstance(m, QUANTIZED)]
    assert len(layers) == 2 * 4 + 1  # per decoder layer q/k/v fused, o, gate/up fused, down; the output layer
    assert not any(type(m) is torch.nn.Linear for m in target.model.modules())
    reference = cpu_model("llama", seed=0)
    quantize_model(reference, mode, GROUP)
    prompt = random_prompt(4)
    ours = SpeculativeGenerator(target).generate(prompt, max_new_tokens=12).token_ids
    assert ours == hf_greedy(reference, prompt, 12)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_bf16_weight_only_targets_get_exact_steps_where_their_kernels_allow(model_dir, mode, monkeypatch, tmp_path):
    """A weight-only int8/int4 target in bf16 computes its activations in bf16, whose logits tie often:
    its quantized kernels are probed like float layers (exact_width) and, where every row keeps its bits
    whatever the row count, it attends row by row like an exact bf16 target."""
    layer_class = Int8Linear if mode == "int8" else Int4Linear
    original = layer_class.forward
    probed = []
    monkeypatch.setattr(specdecode.models.load, "exact_width", lambda layers: probed.extend(layers) or 65)  # any CPU
    target = load_cpu(model_dir, dtype="bf16", quantize=mode, group_size=GROUP)
    assert target.exact_steps and target.linear_kernel == "quantized"
    assert fold_rows_of(target.model.config._attn_implementation)  # row-wise, however many tokens per call
    assert probed and all(isinstance(layer, layer_class) for layer in probed)  # the quantized kernels probed
    monkeypatch.undo()

    def by_other_rows(self, x):  # a kernel whose rounding depends on the other rows: no exact steps possible
        return original(self, x) + 1e-2 * x.sum()

    monkeypatch.setattr(layer_class, "forward", by_other_rows)
    monkeypatch.setenv("SPECDECODE_CALIBRATION_DIR", str(tmp_path))  # another machine: calibrated anew
    unfixable = load_cpu(model_dir, dtype="bf16", quantize=mode, group_size=GROUP)
    assert not unfixable.exact_steps and unfixable.model.config._attn_implementation == GROUPED
    fp32 = load_cpu(model_dir, dtype="fp32", quantize=mode, group_size=GROUP)  # fp32 targets: as they were
    assert not fp32.exact_steps


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_bf16_weight_only_target_stays_exact_when_its_one_row_kernel_rounds_apart(model_dir, mode, monkeypatch):
    """A stand-in for a quantized kernel whose lone rows round apart (rows agree among 2 to 65): it breaks
    speculative decoding of a model left as it was, and exact steps pad its one-row inputs."""
    layer_class = Int8Linear if mode == "int8" else Int4Linear
    original = layer_class.forward

    def one_row_apart(self, x):
        out = original(self, x)
        return out * 1.05 if x.numel() == x.shape[-1] else out

    monkeypatch.setattr(layer_class, "forward", one_row_apart)
    prompts = (random_prompt(5), repetitive_prompt(6))
    drafters = lambda: (LookupDrafter(), RandomDrafter(3))  # noqa: E731
    as_loaded = load_cpu(model_dir, dtype="bf16", quantize=mode, group_size=GROUP, cpu_kernels="weight_first")
    assert not as_loaded.exact_steps
    broken = []
    for prompt in prompts:
        plain = SpeculativeGenerator(as_loaded).generate(prompt, max_new_tokens=30, speculative=False).token_ids
        broken += [d.name for d in drafters() if SpeculativeGenerator(as_loaded, drafter=d, cost_model=None)
                   .generate(prompt, max_new_tokens=30).token_ids != plain]
    assert broken  # this kernel does change speculative output of an unfixed model

    target = load_cpu(model_dir, dtype="bf16", quantize=mode, group_size=GROUP)
    assert target.exact_steps
    assert all(type(m).__name__.startswith("PaddedRow") for m in target.model.modules()
               if isinstance(m, layer_class))
    for prompt in prompts:
        plain = SpeculativeGenerator(target).generate(prompt, max_new_tokens=30, speculative=False).token_ids
        for drafter in drafters():
            out = SpeculativeGenerator(target, drafter=drafter, cost_model=None).generate(prompt, max_new_tokens=30)
            assert out.token_ids == plain, f"{drafter.name} changed the bf16 {mode} model's output"


def test_drafter_quantize_reaches_the_drafter_and_the_bench_assistant(model_dir):
    target = load_cpu(model_dir, dtype="fp32")
    drafter = make_drafter(f"model:{model_dir}", target, DrafterOptions(drafter_quantize="w8a8"))
    assert drafter.draft.quantization == "w8a8" and drafter.draft.dtype == torch.float32
    assert any(isinstance(m, RowInt8Linear) for m in drafter.model.modules())
    assistant = DraftModels("fast-decode", quantize="w8a8")(str(model_dir), target, dtype=torch.float32)
    assert assistant.quantization == "w8a8"


def test_auto_drafter_weights_are_the_measured_fastest_and_never_a_targets(model_dir, monkeypatch):
    """quantize="auto" picks a drafter's weights by timing (w8a8 only where FBGEMM is clearly faster);
    a target's quantization changes its output, so "auto" is refused for it, naming the fix."""
    assert fastest_draft_quantization(torch.device("cpu")) in ((None, "w8a8") if fbgemm_available() else (None,))
    assert fastest_draft_quantization(torch.device("meta")) is None  # not a CPU: the GPU keeps its own path
    # the probe is a timing, so its answer is fixed here: the loading must follow whatever it answers
    # (w8a8 is a possible answer only where PyTorch has FBGEMM, on x86)
    for probed in (None, "w8a8") if fbgemm_available() else (None,):
        monkeypatch.setattr(specdecode.models.load, "draft_quantization", lambda device, probed=probed: probed)
        drafter = load_cpu(model_dir, quantize="auto", drafts_only=True)
        assert drafter.quantization == probed
        if probed == "w8a8":  # FBGEMM computes in fp32: "auto" weights override a bf16 dtype request
            assert load_cpu(model_dir, dtype="bf16", quantize="auto", drafts_only=True).dtype == torch.float32
        own = load_cpu(cpu_model("llama", seed=0), tokenizer=tiny_tokenizer(), quantize="auto", drafts_only=True)
        assert own.quantization is None  # a model instance you built stays as you built it
        with pytest.raises(SpecDecodeError, match="drafter models only"):
            load_cpu(model_dir, quantize="auto")
        assert make_drafter(f"model:{model_dir}", load_cpu(model_dir)).draft.quantization == probed  # the default


def test_bench_assistant_of_fbgemm_drafters_computes_in_fp32_whatever_the_targets_dtype(model_dir):
    target = load_cpu(model_dir, dtype="bf16")
    assistant = DraftModels("fast-decode", quantize="w8a8")(str(model_dir), target, dtype=target.dtype)
    assert assistant.quantization == "w8a8" and assistant.dtype == torch.float32


@pytest.mark.parametrize("mode", MODES)
def test_speculative_decoding_of_a_quantized_model_equals_its_plain_decoding(mode):
    target_model = cpu_model("llama", seed=0)
    quantize_model(target_model, mode, GROUP)
    target = loaded(target_model)
    drafter_model = cpu_model("llama", seed=0)
    quantize_model(drafter_model, "int8" if mode == "int4" else "int4", GROUP)  # close to, not equal to, the target
    other = cpu_model("llama", seed=1)
    quantize_model(other, mode, GROUP)
    drafters = [ModelDrafter(loaded(drafter_model), k=4, confidence=0),
                ModelDrafter(loaded(other), k=3, tree_width=2),
                LookupDrafter(), RetrievalDrafter(min_ngram=1), RandomDrafter(3)]
    for prompt in (random_prompt(5), repetitive_prompt(6)):
        reference = hf_greedy(target_model, prompt, 30)
        for drafter in drafters:
            out = SpeculativeGenerator(target, drafter=drafter, cost_model=None).generate(prompt, max_new_tokens=30)
            assert out.token_ids == reference, f"{drafter.name} changed the output of the {mode} model"


def test_bad_input(monkeypatch):
    with pytest.raises(SpecDecodeError, match="unknown quantization 'int3'"):
        quantize_model(cpu_model(), "int3")
    with pytest.raises(SpecDecodeError, match="group size 128 does not divide"):
        quantize_model(cpu_model(), "int4", group_size=128)
    with pytest.raises(SpecDecodeError, match="int4 group size must be one of"):
        quantize_model(cpu_model(), "int4", group_size=48)
    with pytest.raises(SpecDecodeError, match="fp32 or bf16"):
        quantize_model(cpu_model().half(), "int8")
    with pytest.raises(SpecDecodeError, match="no linear layers"):
        quantize_model(torch.nn.Sequential(torch.nn.Embedding(4, 4)), "int8")
    with pytest.raises(SpecDecodeError, match="fp32 activations.*dtype='fp32'"):
        quantize_model(cpu_model().to(torch.bfloat16), "w8a8")
    with monkeypatch.context() as patch:
        patch.setattr(quantize_module, "fbgemm_available", lambda: False)
        with pytest.raises(SpecDecodeError, match="needs FBGEMM.*use quantize='int8'"):
            quantize_model(cpu_model(), "fp16")
    quantized = cpu_model()
    quantize_model(quantized, "int4", GROUP)
    with pytest.raises(SpecDecodeError, match="Int4Linear.*cannot select rows"):
        ModelDrafter(loaded(quantized), draft_vocab=40)
    monkeypatch.setattr(quantize_module, "int4_kernel_available", lambda: False)
    with pytest.raises(SpecDecodeError, match="no CPU int4 kernel.*use quantize='int8'"):
        quantize_model(cpu_model(), "int4", GROUP)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: checks the refusal on a GPU model")
def test_quantization_refuses_a_gpu_model():
    with pytest.raises(SpecDecodeError, match="CPU kernels"):
        quantize_model(tiny_model(device=torch.device("cuda")), "int8")


@pytest.mark.zoo
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_bf16_weight_only_smollm2_speculative_equals_plain(mode):
    """SmolLM2 in bf16 with int8 / int4 (its GGUF's blocks) weights: before exact steps, lookup, model
    and garbage drafts all left plain decoding on this prompt (AVX-512 BF16 EPYC)."""
    target = load_cpu("smollm2-135m-instruct", dtype="bf16", quantize=mode)
    if not target.exact_steps:  # calibration found no exact width on this CPU: the model says so, and
        assert target.model.config._attn_implementation == GROUPED  # "auto" chooses fp32 instead
        assert load_cpu("smollm2-135m-instruct", quantize=mode).dtype == torch.float32
        return
    prompt = [{"role": "user", "content": "Repeat after me: the quick brown fox jumps over the lazy dog."}]
    plain = SpeculativeGenerator(target).generate(prompt, max_new_tokens=48, speculative=False)
    drafter_model = load_cpu("smollm2-135m-instruct", dtype="fp32", drafts_only=True)
    for drafter in (LookupDrafter(tree_width=2), ModelDrafter(drafter_model, k=5, confidence=0), RandomDrafter(7)):
        out = SpeculativeGenerator(target, drafter=drafter, cost_model=None).generate(prompt, max_new_tokens=48)
        assert out.token_ids == plain.token_ids, f"{drafter.name} changed the bf16 {mode} model's output"


@pytest.mark.zoo
def test_w8a8_smollm2_speculative_equals_plain():
    target = load_cpu("smollm2-135m-instruct", quantize="w8a8")
    assert target.dtype == torch.float32
    prompt = [{"role": "user", "content": "Repeat after me: the quick brown fox jumps over the lazy dog."}]
    plain = SpeculativeGenerator(target).generate(prompt, max_new_tokens=24)
    drafter_model = load_cpu("smollm2-135m-instruct", dtype="fp32", quantize="int8")  # another model of it
    for drafter in (LookupDrafter(), ModelDrafter(drafter_model, k=4, confidence=0), RandomDrafter(3)):
        out = SpeculativeGenerator(target, drafter=drafter, cost_model=None).generate(prompt, max_new_tokens=24)
        assert out.token_ids == plain.token_ids, f"{drafter.name} changed the w8a8 model's output"
