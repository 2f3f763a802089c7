"""Tiny random models built from a config (no downloads) and helpers the tests share."""

from __future__ import annotations

import os
import random

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from specdecode.drafters import Drafter
from specdecode.models.load import LoadedModel
from specdecode.tree import DraftTree

VOCAB = 96
_LINEAR = F.linear  # the real product, before any test replaces F.linear with a stand-in
# Where tiny models live: "cpu" (CI) or e.g. "cuda" to run the same tests on a GPU
# (SPECDECODE_TEST_DEVICE=cuda python -m pytest tests/test_exactness.py ...).
TEST_DEVICE = torch.device(os.environ.get("SPECDECODE_TEST_DEVICE", "cpu"))


def tiny_model(arch: str = "llama", seed: int = 0, vocab: int = VOCAB, layers: int = 2,
               device: torch.device = TEST_DEVICE, context: int = 512) -> torch.nn.Module:
    """A random 2-layer model in fp32 with a context of `context` tokens; exactness holds for any weights."""
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                  initializer_range=0.3)  # peaked, varied outputs (the default 0.02 gives near-uniform logits)
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True))
    else:
        raise ValueError(arch)
    model.config._attn_implementation = "sdpa"
    model.generation_config.eos_token_id = None  # tests choose their own end-of-sequence token
    return model.to(device).eval()


def cpu_model(*args, **kwargs) -> torch.nn.Module:
    """A tiny model on the CPU whatever SPECDECODE_TEST_DEVICE says: for tests of the CPU's kernels."""
    return tiny_model(*args, device=torch.device("cpu"), **kwargs)


def loaded(model: torch.nn.Module, name: str = "tiny") -> LoadedModel:
    return LoadedModel(model=model, tokenizer=None, name=name, dtype=model.dtype, device=model.device)


def random_prompt(seed: int, length: int = 12, vocab: int = VOCAB) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(vocab) for _ in range(length)]


def repetitive_prompt(seed: int, vocab: int = VOCAB) -> list[int]:
    """A prompt that repeats a phrase, so prompt lookup finds matches."""
    phrase = random_prompt(seed, 6, vocab)
    return phrase * 3 + phrase[:3]


def hf_greedy(model: torch.nn.Module, prompt: list[int], max_new_tokens: int, eos: int | None = None) -> list[int]:
    """transformers' own greedy decoding: the reference every drafter must match."""
    ids = torch.tensor([prompt], device=model.device)
    # An explicit all-ones mask: without it transformers masks every prompt token equal to pad_token_id.
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=eos, pad_token_id=0 if eos is None else eos)
    return out[0, len(prompt):].tolist()


class RandomDrafter(Drafter):
    """Proposes garbage: random tokens in random tree shapes. It must never change the output."""

    name = "random"

    def __init__(self, seed: int, vocab: int = VOCAB, max_nodes: int = 12):
        self.rng = random.Random(seed)
        self.vocab = vocab
        self.max_nodes = max_nodes

    def propose(self, context_ids, budget):
        n = self.rng.randint(0, min(budget, self.max_nodes))
        parents = [self.rng.randint(-1, i - 1) for i in range(n)]
        tokens = [self.rng.randrange(self.vocab) for _ in range(n)]
        return DraftTree(tokens, parents)


class OracleDrafter(Drafter):
    """Knows the true continuation and plants it on one branch of a random tree (with random
    siblings and a random wrong turn), so deep acceptance through trees is exercised."""

    name = "oracle"

    def __init__(self, prompt: list[int], truth: list[int], seed: int, vocab: int = VOCAB):
        self.full = list(prompt) + list(truth)
        self.rng = random.Random(seed)
        self.vocab = vocab

    def propose(self, context_ids, budget):
        start = len(context_ids)
        right = self.full[start : start + self.rng.randint(0, budget)]
        tokens, parents = [], []
        parent = -1
        for token in right:
            for _ in range(self.rng.randint(0, 2)):  # decoys before the right child
                tokens.append(self.rng.randrange(self.vocab))
                parents.append(parent)
            tokens.append(token)
            parents.append(parent)
            parent = len(tokens) - 1
        if right and self.rng.random() < 0.5:  # a wrong last token
            tokens[-1] = (tokens[-1] + 1) % self.vocab
        keep = min(len(tokens), budget)
        return DraftTree(tokens[:keep], parents[:keep])


def tiny_tokenizer(vocab: int = VOCAB):
    """A word-level tokenizer over words w0..w{vocab-1} ("<eos>" is id 1), with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(vocab)}
    words["<eos>"] = 1
    del words["w1"]
    backend = Tokenizer(models.WordLevel(vocab=words, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="w0")
    tokenizer.chat_template = "{% for m in messages %}w2 {{ m['content'] }} w3 {% endfor %}w4"
    return tokenizer


def first_token_total_variation(gen, model: torch.nn.Module, prompt: list[int], samples: int = 4000) -> float:
    """Total variation between the first token `gen` samples (temperature 1, seeds 0..samples-1)
    and the target model's softmax after `prompt`."""
    with torch.no_grad():
        target = model(torch.tensor([prompt], device=model.device)).logits[0, -1].float().softmax(-1).cpu()  # [vocab]
    counts = torch.zeros_like(target)
    for seed in range(samples):
        counts[gen.generate(prompt, max_new_tokens=2, temperature=1.0, seed=seed).token_ids[0]] += 1
    return 0.5 * float((counts / counts.sum() - target).abs().sum())


def assert_frequencies_match(counts: torch.Tensor, target: torch.Tensor) -> None:
    """Sampled token counts [vocab] are within twice the total variation from `target` [vocab] (probabilities)
    that exact sampling shows on average with as many samples: E[TV] ~ sum sqrt(2 p (1 - p) / (pi n)) / 2."""
    samples = float(counts.sum())
    tv = 0.5 * float((counts / samples - target).abs().sum())
    noise = 0.5 * float((2 * target * (1 - target) / (torch.pi * samples)).sqrt().sum())
    assert tv < 2 * noise, (tv, noise)


def rowwise_linear(x, weight, bias=None):
    """A product that gives every row the same bits whatever the row count (one row at a time)."""
    flat = x.reshape(-1, 1, x.shape[-1])  # [rows, 1, in]
    return torch.cat([_LINEAR(row, weight, bias) for row in flat]).reshape(*x.shape[:-1], weight.shape[0])


def stand_in_linear(exact_rows: int | None = None, apart: float = 2 ** -7):
    """F.linear as some CPUs compute bf16 products, whatever CPU runs the test: every row gets the same bits
    among any number of rows (computed one at a time), but a lone row (a one-token step, as oneDNN's
    matrix-vector path on an AVX-512 BF16 EPYC) is moved by about a bf16 step, and with `exact_rows` so are
    products of more rows (a Sapphire Rapids with AMX keeps the bits up to 32 rows, not at 64). `apart`: the
    relative move."""

    def linear(x, weight, bias=None):
        rows = x.numel() // x.shape[-1]
        out = rowwise_linear(x, weight, bias)
        moved = rows == 1 or (exact_rows is not None and rows > exact_rows)
        return out * (1 + apart) if moved else out

    return linear


def invoke_cli(*args: str):
    """Run the `specdecode` command in-process; a command may fail with its message, never with a traceback."""
    from typer.testing import CliRunner

    from specdecode.cli.main import app

    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def tiny_model_folder(folder) -> str:
    """A tiny Llama (end-of-sequence id 1) and the tiny tokenizer saved in `folder`, for the command line."""
    model = tiny_model("llama", seed=0)
    model.generation_config.eos_token_id = 1
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


IMAGE_TOKEN = "<image>"  # the tiny LLaVA processor's image placeholder (id 96)


def tiny_processor():
    """A LLaVA processor: CLIP's PIL image processor (32x32) and the tiny tokenizer plus an image token."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})  # id 96
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8,
                          vision_feature_select_strategy="full", num_additional_image_tokens=1)  # 16 patches + CLS


def tiny_llava(seed: int = 0):
    """A random LLaVA: 32x32 images in patches of 8 (17 image tokens each), a 2-layer Llama over 97 tokens."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)
    text = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       initializer_range=0.3)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_id=96,
                                                      vision_feature_select_strategy="full",
                                                      vision_feature_layer=-1))
    model.generation_config.eos_token_id = None
    return model.eval()


QWEN_VL_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]  # ids 96..99


def tiny_qwen2_vl_processor():
    """Qwen2-VL's processor without its video part: the pillow image processor (images resized to 4..16 merged
    patches of 28x28 pixels), the tiny tokenizer plus the vision tokens, and a chat template."""
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from specdecode.multimodal.processors import image_only

    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_VL_TOKENS})
    images = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16, patch_size=14, merge_size=2)
    template = ("{% for m in messages %}w2 {% for c in m['content'] %}{% if c['type'] == 'image' %}"
                "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
                " w3 {% endfor %}w4")
    return image_only(Qwen2VLProcessor)(image_processor=images, tokenizer=tokenizer, chat_template=template)


def tiny_qwen2_vl(seed: int = 0, family: str = "qwen2_vl"):
    """A random Qwen2-VL (or Qwen2.5-VL): a 2-block vision tower (patches of 14, merged 2x2), a 2-layer
    language model over 101 tokens with M-RoPE sections [2, 3, 3]."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration)

    text = dict(vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.3,
                rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, bos_token_id=None, eos_token_id=None)
    vision = dict(depth=2, hidden_size=32, num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                  in_chans=3)
    if family == "qwen2_vl":
        config_class, model_class = Qwen2VLConfig, Qwen2VLForConditionalGeneration
        vision.update(embed_dim=32, hidden_size=64, mlp_ratio=2)
    else:
        config_class, model_class = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
        vision.update(intermediate_size=64, out_hidden_size=64, window_size=56, fullatt_block_indexes=[1])
    torch.manual_seed(seed)
    model = model_class(config_class(text_config=text, vision_config=vision, image_token_id=98, video_token_id=99,
                                     vision_start_token_id=96, vision_end_token_id=97))
    model.generation_config.eos_token_id = None
    return model.eval()


IDEFICS_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]  # ids 96..99


def tiny_idefics3_processor(family: str = "idefics3"):
    """Idefics3's (or SmolVLM's image-only) processor: the PIL image processor (32x32, no splitting: an image
    is <fake_token_around_image><global-img>, 16 <image> tokens, <fake_token_around_image>) and the tiny
    tokenizer plus the image tokens (<image> is id 97)."""
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    from specdecode.multimodal.processors import SmolVLMImageOnly

    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": IDEFICS_TOKENS})
    image_class, processor_class = ((Idefics3ImageProcessorPil, Idefics3Processor) if family == "idefics3"
                                    else (SmolVLMImageProcessorPil, SmolVLMImageOnly))
    images = image_class(size={"longest_edge": 32}, max_image_size={"longest_edge": 32}, do_image_splitting=False)
    return processor_class(image_processor=images, tokenizer=tokenizer, image_seq_len=16)


def tiny_idefics3(seed: int = 0, family: str = "idefics3"):
    """A random Idefics3 (or SmolVLM): a 2-layer vision tower over 32x32 images in patches of 4, pixel shuffle
    by 2 (16 image tokens), a 2-layer Llama over 100 tokens."""
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, SmolVLMConfig,
                              SmolVLMForConditionalGeneration)

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=4)
    text = dict(model_type="llama", vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.3)
    config_class, model_class = ((Idefics3Config, Idefics3ForConditionalGeneration) if family == "idefics3"
                                 else (SmolVLMConfig, SmolVLMForConditionalGeneration))
    torch.manual_seed(seed)
    model = model_class(config_class(vision_config=vision, text_config=text, image_token_id=97, scale_factor=2))
    model.generation_config.eos_token_id = None
    return model.eval()


def noise(seed: int, height: int = 40, width: int = 50):
    """A random RGB image (numpy uint8 [height, width, 3])."""
    import numpy as np

    return (np.random.RandomState(seed).rand(height, width, 3) * 255).astype(np.uint8)


def hf_vlm_greedy(model, processor, images, text: str, max_new_tokens: int) -> list[int]:
    """transformers' own greedy decoding of an image prompt, to the tokenizer's end of sequence as the engine's."""
    inputs = processor(images=images, text=[text], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0,
                         eos_token_id=processor.tokenizer.eos_token_id)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def assert_trees_verify_exactly(vlm, prompt, vocab: int, max_new_tokens: int = 30) -> None:
    """The true continuation planted on one branch of random trees (siblings, wrong turns) over an image prompt:
    the same tokens as plain decoding, with steps that accept two or more draft tokens."""
    from specdecode import SpeculativeGenerator

    plain = SpeculativeGenerator(vlm).generate(prompt, max_new_tokens=max_new_tokens)
    assert len(plain.token_ids) == max_new_tokens  # no early end: the trees are tested all the way
    for seed in range(3):
        drafter = OracleDrafter(plain.prompt_ids, plain.token_ids, seed=seed, vocab=vocab)
        out = SpeculativeGenerator(vlm, drafter, cost_model=None).generate(prompt, max_new_tokens=max_new_tokens)
        assert out.token_ids == plain.token_ids
        assert sum(out.stats.accept_histogram[2:]) > 0


IMAGE_CHAT_TEMPLATE = ("{% for m in messages %}w2 {% for part in m['content'] %}{% if part['type'] == 'image' %}"
                       "<image> {% else %}{{ part['text'] }} {% endif %}{% endfor %}w3 {% endfor %}w4")


def assert_chat_messages_decode_as_transformers(model, processor, image) -> None:
    """Chat messages with an image part (through IMAGE_CHAT_TEMPLATE, an "<image>" placeholder) decode as
    transformers' own generate of the templated text, and {"images": ..., "prompt": ...} alike."""
    from specdecode import SpeculativeGenerator
    from specdecode.drafters import LookupDrafter
    from specdecode.multimodal import load_vlm

    processor.chat_template = IMAGE_CHAT_TEMPLATE
    vlm = load_vlm(model, processor=processor, dtype="fp32")
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "w9"}]}]
    out = SpeculativeGenerator(vlm, LookupDrafter()).generate(messages, max_new_tokens=12)
    assert out.token_ids == hf_vlm_greedy(model, processor, [image], "w2 <image> w9 w3 w4", 12)
    as_dict = SpeculativeGenerator(vlm).generate({"images": [image], "prompt": "w9"}, max_new_tokens=12)
    assert as_dict.token_ids == out.token_ids  # a question alone goes through the chat template too
