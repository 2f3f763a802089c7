"""CaptionPipeline over a tiny random LLaVA: one image or many (lists, folders, globs), speculative captions
equal plain ones, results written to JSONL or CSV whole, bad input refused before anything is written."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from matplotlib import cbook
from tiny import tiny_llava, tiny_processor

from specdecode.errors import SpecDecodeError
from specdecode.multimodal import load_vlm
from specdecode.pipelines import Caption, CaptionPipeline, write_captions


@pytest.fixture(scope="module")
def vlm():
    return load_vlm(tiny_llava(seed=7), processor=tiny_processor(), dtype="fp32")


@pytest.fixture
def folder(tmp_path):
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as file:
        (tmp_path / "b_hopper.jpg").write_bytes(file.read())
    Image.fromarray((np.random.RandomState(1).rand(40, 50, 3) * 255).astype(np.uint8)).save(tmp_path / "a_noise.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_one_image_gives_one_caption_and_speculation_changes_nothing(vlm, folder):
    captions = CaptionPipeline(vlm, prompt="w5 w6", max_new_tokens=16)
    caption = captions(folder / "b_hopper.jpg")
    assert isinstance(caption, Caption) and caption.image.endswith("b_hopper.jpg")
    plain = captions(folder / "b_hopper.jpg", speculative=False)
    assert caption.token_ids == plain.token_ids and len(caption.token_ids) == 16
    assert caption.text == caption.output.text.strip()


def test_a_folder_a_glob_and_a_list(vlm, folder):
    captions = CaptionPipeline(vlm, prompt="w5", max_new_tokens=8, progress=False)
    from_folder = captions(folder)
    assert [c.image.rsplit("/", 1)[-1] for c in from_folder] == ["a_noise.png", "b_hopper.jpg"]  # images only
    assert [c.token_ids for c in captions(str(folder / "*.jpg"))] == [from_folder[1].token_ids]
    array = np.zeros((20, 20, 3), dtype=np.uint8)
    mixed = captions([folder / "a_noise.png", array])
    assert [c.image for c in mixed][1] == "image 2" and mixed[0].token_ids == from_folder[0].token_ids


def test_captions_written_whole_to_jsonl_and_csv(vlm, folder, tmp_path):
    captions = CaptionPipeline(vlm, prompt="w5", max_new_tokens=6, progress=False)(folder)
    jsonl = write_captions(captions, tmp_path / "out.jsonl")
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["caption"] for r in records] == [c.text for c in captions] and records[0]["new_tokens"] == 6
    rows = list(csv.DictReader(write_captions(captions, tmp_path / "out.csv").open()))
    assert [r["image"] for r in rows] == [c.image for c in captions]
    with pytest.raises(SpecDecodeError, match="a .jsonl or a .csv file"):
        write_captions(captions, tmp_path / "out.txt")
    with pytest.raises(SpecDecodeError, match="does not exist"):
        write_captions(captions, tmp_path / "missing" / "out.jsonl")
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("images, message", [
    ([], "no images given"),
    ("/no/such/folder", "no such image file or folder"),
])
def test_bad_input_gets_one_clear_error(vlm, images, message):
    with pytest.raises(SpecDecodeError, match=message):
        CaptionPipeline(vlm, progress=False)(images)


def test_bad_options(vlm):
    with pytest.raises(SpecDecodeError, match="prompt is empty"):
        CaptionPipeline(vlm, prompt=" ")
    with pytest.raises(SpecDecodeError, match="max_new_tokens"):
        CaptionPipeline(vlm, max_new_tokens=0)


def saved_vlm(folder):
    model, processor = tiny_llava(seed=7), tiny_processor()
    processor.tokenizer.chat_template = None  # the tiny tokenizer's template knows no image parts
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def test_the_caption_command(folder, tmp_path):
    from tiny import invoke_cli

    model = saved_vlm(tmp_path / "vlm")
    out = tmp_path / "captions.jsonl"
    result = invoke_cli("caption", str(folder), "--model", model, "--dtype", "fp32", "-n", "6", "--prompt", "w5",
                        "--compare", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    assert result.output.count("identical token ids: yes") == 2 and "wrote 2 captions" in result.output
    assert [json.loads(line)["image"].rsplit("/", 1)[-1] for line in out.read_text().splitlines()] == \
        ["a_noise.png", "b_hopper.jpg"]
    bad = invoke_cli("caption", str(folder / "missing.jpg"), "--model", model)
    assert bad.exit_code != 0 and "no such image file or folder" in bad.output
    wrong_out = invoke_cli("caption", str(folder), "--model", model, "--out", str(tmp_path / "x.txt"))
    assert wrong_out.exit_code != 0 and ".jsonl or a .csv" in wrong_out.output
