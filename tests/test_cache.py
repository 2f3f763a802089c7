"""KVCache: in-place growth (GrowingLayer) and the surgery speculative decoding does on it."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from specdecode.runtime.runner import SDPABackend
from specdecode.runtime.cache import GROWTH_MIN_ENTRIES, GrowingLayer, KVCache
from tiny import random_prompt, tiny_model


def feed(model, cache, ids: list[int], start: int) -> torch.Tensor:
    """One forward of `ids` at positions start.. through `cache` (a KVCache); logits [q, vocab]."""
    return SDPABackend().forward(model, cache, torch.tensor(ids), torch.arange(start, start + len(ids)))


def test_every_layer_grows_in_place():
    model = tiny_model("qwen2")
    cache = KVCache(model)
    assert all(isinstance(layer, GrowingLayer) for layer in cache.hf.layers)
    prompt = random_prompt(0, length=20)
    with torch.inference_mode():
        feed(model, cache, prompt, 0)
        buffers = [layer.key_buffer.data_ptr() for layer in cache.hf.layers]
        for step in range(30):  # well inside the spare room: no step reallocates or copies the cache
            feed(model, cache, [step % 90], 20 + step)
    assert [layer.key_buffer.data_ptr() for layer in cache.hf.layers] == buffers
    assert cache.length == 50
    assert cache.hf.layers[0].keys.shape[-2] == 50


def test_growing_cache_gives_what_transformers_dynamic_cache_gives():
    """Past several reallocations, with crop, keep (a tree's accepted path) and cast between steps."""
    model = tiny_model("llama")
    ids = random_prompt(1, length=GROWTH_MIN_ENTRIES + 200, vocab=90)
    ours = KVCache(model)
    reference = KVCache(model)
    reference.hf = DynamicCache(config=model.config)  # transformers' own torch.cat layers
    with torch.inference_mode():
        for cache in (ours, reference):
            feed(model, cache, ids[:8], 0)
        position = 8
        while position + 5 <= len(ids):
            chunk = ids[position : position + 5]
            logits = [feed(model, cache, chunk, position) for cache in (ours, reference)]
            torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=1e-6)
            for cache in (ours, reference):  # keep 3 of the 5 fed entries, not a prefix: entries move
                cache.keep(position, [0, 2, 4])
            position += 3
            if position % 60 < 3:
                for cache in (ours, reference):
                    cache.crop(position - 2)
                position -= 2
        for cache in (ours, reference):
            cache.cast(torch.float64)
            cache.cast(torch.float32)  # the views are replaced; the next step copies into fresh buffers
        logits = [feed(model, cache, ids[:4], position) for cache in (ours, reference)]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=1e-6)
    assert ours.length == reference.length == position + 4
    for mine, theirs in zip(ours.hf.layers, reference.hf.layers):
        torch.testing.assert_close(mine.keys, theirs.keys, rtol=0, atol=0)
        torch.testing.assert_close(mine.values, theirs.values, rtol=0, atol=0)


def test_reset_reuses_the_buffers():
    model = tiny_model("qwen2")
    cache = KVCache(model)
    with torch.inference_mode():
        first = feed(model, cache, random_prompt(2), 0)
        buffers = [layer.key_buffer.data_ptr() for layer in cache.hf.layers]
        cache.reset()
        assert cache.length == 0
        again = feed(model, cache, random_prompt(2), 0)
    assert [layer.key_buffer.data_ptr() for layer in cache.hf.layers] == buffers
    torch.testing.assert_close(first, again, rtol=0, atol=0)
