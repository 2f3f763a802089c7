"""RAGPipeline end to end: retrieval with the real offline embedder, a prompt citing numbered sources,
retrieval drafting; answers identical to plain decoding (tiny model, and SmolLM2 from the zoo)."""

from __future__ import annotations

import random

import pytest
from tiny import tiny_model, tiny_tokenizer

from specdecode.drafters import MixtureDrafter, ModelDrafter, RetrievalDrafter
from specdecode.errors import SpecDecodeError
from specdecode.models.load import LoadedModel
from specdecode.pipelines import Pipeline, PipelineState, RAGPipeline, Retrieve
from specdecode.retrieval import Datastore, load_embedder


@pytest.fixture(scope="module")
def embedder():
    return load_embedder()


def tiny_target(seed: int = 0) -> LoadedModel:
    model = tiny_model("llama", seed=seed)
    model.generation_config.eos_token_id = 1
    return LoadedModel(model=model, tokenizer=tiny_tokenizer(), name=f"tiny-{seed}", dtype=model.dtype,
                       device=model.device)


@pytest.fixture(scope="module")
def word_store(embedder):
    """Documents of the tiny tokenizer's words, so the tiny model reads them token for token."""
    rng = random.Random(0)
    docs = [" ".join(f"w{rng.randrange(2, 96)}" for _ in range(60)) for _ in range(6)]
    return Datastore.build(docs, embedder=embedder, chunk_tokens=48, overlap=8)


def test_rag_answer_equals_plain_and_returns_sources(word_store):
    target = tiny_target()
    question = " ".join(word_store.records[0]["text"].split()[:6])
    for drafter in ("auto", MixtureDrafter([RetrievalDrafter(), ModelDrafter(tiny_target(1), k=3)])):
        rag = RAGPipeline(target, word_store, drafter=drafter, k=3, max_new_tokens=30)
        answer = rag(question)
        plain = rag(question, speculative=False)
        assert answer.output.token_ids == plain.output.token_ids and answer.text == plain.text
        assert len(answer.sources) == 3 and answer.sources[0].score >= answer.sources[-1].score
        assert answer.stats.new_tokens == 30 and answer.notes == ()
        streamed = rag.stream(question)
        pieces = []
        while True:
            try:
                pieces.append(next(streamed))
            except StopIteration as done:
                assert done.value.output.token_ids == answer.output.token_ids
                break
        assert "".join(pieces) == answer.text


def test_prompt_cites_numbered_sources(word_store):
    rag = RAGPipeline(tiny_target(), word_store, k=2, max_new_tokens=4)
    state = PipelineState(question="w5 w6", options={"max_new_tokens": 4})
    rag.pipeline(state)
    content = state.prompt[0]["content"]
    assert "[1] (text:" in content and "[2] (text:" in content and content.endswith("Question: w5 w6")


def test_passages_that_do_not_fit_are_dropped_and_said(word_store):
    rag = RAGPipeline(tiny_target(), word_store, k=4, max_new_tokens=8)
    answer = rag("w5 w6 w7", max_new_tokens=470)  # the tiny model's context is 512 tokens
    assert len(answer.sources) < 4
    assert any("to fit the context" in note for note in answer.notes)
    assert answer.stats.new_tokens <= 470


def test_bad_input(word_store, embedder):
    with pytest.raises(SpecDecodeError, match="k must be a whole number >= 1"):
        RAGPipeline(tiny_target(), word_store, k=0)
    rag = RAGPipeline(tiny_target(), word_store)
    with pytest.raises(SpecDecodeError, match="the question is empty"):
        rag("   ")
    empty = Datastore.build(["w5 w6 w7"], embedder=embedder)
    empty.records.clear()
    with pytest.raises(SpecDecodeError, match="this datastore is empty"):
        RAGPipeline(tiny_target(), empty)("w5")
    with pytest.raises(SpecDecodeError, match="non-empty list of stages"):
        Pipeline([])
    assert Retrieve(word_store, 2).k == 2


@pytest.mark.zoo
def test_rag_on_smollm2_is_identical_to_plain(embedder):
    from specdecode import load_model

    target = load_model("smollm2-135m-instruct", dtype="fp32")
    docs = [
        "The Python built-in function sorted() returns a new sorted list from the items of any iterable. "
        "It accepts a key function and a reverse flag; the sort is stable.",
        "list.sort() sorts a list in place and returns None. Use sorted() when you need a new list.",
        "The csv module reads and writes comma-separated values; csv.reader iterates over rows of a file.",
    ]
    store = Datastore.build(docs, embedder=embedder, chunk_tokens=64, overlap=8)
    for drafter in ("auto", MixtureDrafter([RetrievalDrafter(), ModelDrafter(target, k=3)])):
        rag = RAGPipeline(target, store, drafter=drafter, k=2, max_new_tokens=40)
        answer = rag("What is the difference between sorted() and list.sort()?")
        plain = rag("What is the difference between sorted() and list.sort()?", speculative=False)
        assert answer.output.token_ids == plain.output.token_ids
        assert {p.source for p in answer.sources} == {"text:0", "text:1"}
        assert answer.stats.mean_accepted > 1.0
