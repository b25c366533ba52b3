"""SFTDataset with the real processor: labels token by token, media layout, truncation, bad records, examples."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mossvl.constants import IGNORE_INDEX
from mossvl.errors import MediaError, QueryError
from mossvl.training.data import SFTCollator, SFTDataset

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "finetune"


def expected_labels(input_ids: torch.Tensor, tokenizer) -> list[int]:
    """Independent reference: inside each assistant turn, every token after the 'assistant\\n' header up to and
    including that turn's <|im_end|>; -100 everywhere else."""
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    header = tokenizer.encode("assistant\n", add_special_tokens=False)
    ids = input_ids.tolist()
    labels = [IGNORE_INDEX] * len(ids)
    for i, token in enumerate(ids):
        if token == im_start and ids[i + 1 : i + 1 + len(header)] == header:
            j = i + 1 + len(header)
            while ids[j] != im_end:
                labels[j] = ids[j]
                j += 1
            labels[j] = im_end
    return labels


def dataset(path, processor, media_dir, **kwargs) -> SFTDataset:
    return SFTDataset(path, processor, data_dir=media_dir, **kwargs)


def test_labels_cover_assistant_tokens_and_im_end_only(sft_file, golden_processor, media_dir):
    data = dataset(sft_file, golden_processor, media_dir)
    tokenizer = golden_processor.tokenizer
    image_pad, im_end = tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|im_end|>"])
    for index in range(len(data)):
        sample = data[index]
        assert sample["labels"].tolist() == expected_labels(sample["input_ids"], tokenizer), index
        assert not bool((sample["labels"] == image_pad).any())
    multi_turn = data[1]
    assert int((multi_turn["labels"] == im_end).sum()) == 2  # one per assistant turn
    assert int((multi_turn["input_ids"] == im_end).sum()) == 5  # system, 2 user, 2 assistant turns


def test_sample_layout_matches_media(sft_file, golden_processor, media_dir):
    data = dataset(sft_file, golden_processor, media_dir)
    tokenizer = golden_processor.tokenizer
    image_pad, vision_start = tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|vision_start|>"])
    for index in range(len(data)):
        s = data[index]
        frames = int((s["input_ids"] == image_pad).sum())
        grid = s["grid_thw"]
        assert s["pixel_values"].shape[0] == int(grid.prod(-1).sum())
        assert s["media_nums_per_sample"] == grid.shape[0]
        assert s["cross_attention_mask"].shape == (len(s["input_ids"]), int(grid[:, 0].sum()))
        if frames:
            assert frames == int(grid[:, 0].sum())
    text = tokenizer.decode(data[0]["input_ids"])
    assert text.startswith(
        "<|im_start|>user\n<|image_pad|>\nWhat colour dominates?<|im_end|>\n<|im_start|>assistant\n"
    )
    # A text-only sample carries the processor's blank image, masked for every token.
    assert data[3]["media_nums_per_sample"] == 1 and bool(data[3]["cross_attention_mask"].all())
    segmented = data[4]
    assert int((segmented["input_ids"] == vision_start).sum()) == 2  # one video block per segment
    assert segmented["grid_thw"].shape[0] == 2


def test_truncation_drops_trailing_turn_with_its_image(sft_file, golden_processor, media_dir):
    full = dataset(sft_file, golden_processor, media_dir)[1]
    tokenizer = golden_processor.tokenizer
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    turn_starts = (full["input_ids"] == im_start).nonzero().flatten().tolist()
    short = dataset(sft_file, golden_processor, media_dir, max_length=turn_starts[-1] + 2)[1]
    # The last answer does not fit: the second question and its image go with it.
    assert len(short["input_ids"]) == turn_starts[3]
    assert short["grid_thw"].tolist() == full["grid_thw"][:1].tolist()
    assert short["media_nums_per_sample"] == 1
    assert short["labels"].tolist() == expected_labels(short["input_ids"], tokenizer)
    rows = int(full["grid_thw"][0].prod())
    assert torch.equal(short["pixel_values"], full["pixel_values"][:rows])


def test_truncation_keeps_video_blocks_whole(tmp_path, golden_processor, media_dir):
    record = {
        "messages": [
            {"role": "user", "content": "Look."},
            {"role": "assistant", "content": "At this: <|video|> as shown in the video above."},
        ],
        "videos": ["vid_a_47f_10fps_48x64.mp4"],
    }
    path = tmp_path / "one.json"
    path.write_text(json.dumps([record]))
    tokenizer = golden_processor.tokenizer
    vision_start, vision_end = tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>"])
    full = dataset(path, golden_processor, media_dir)[0]
    start = int((full["input_ids"] == vision_start).nonzero()[0])
    end = int((full["input_ids"] == vision_end).nonzero()[0])
    cut = dataset(path, golden_processor, media_dir, max_length=(start + end) // 2)[0]
    assert len(cut["input_ids"]) == start  # the whole block went, not half of it
    # With its only video gone, the sample gets the blank image of a text-only sample.
    assert cut["media_nums_per_sample"] == 1 and bool(cut["cross_attention_mask"].all())
    with pytest.raises(QueryError, match=r"record 0: no supervised token fits in max_length 8"):
        dataset(path, golden_processor, media_dir, max_length=8)[0]


def test_bad_records_raise_with_index_or_are_skipped(tmp_path, golden_processor, media_dir):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    lines = [
        json.dumps({"prompt": "a", "response": "b"}),
        json.dumps({"prompt": "a"}),
        "{not json",
        json.dumps({"prompt": "a", "response": "b", "images": [str(tmp_path / "broken.png")]}),
        json.dumps({"prompt": "c", "response": "d"}),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines))
    strict = dataset(path, golden_processor, media_dir)
    with pytest.raises(QueryError, match=r"record 1: field 'response' is missing"):
        strict[1]
    with pytest.raises(QueryError, match=r"record 2: invalid JSON"):
        strict[2]
    with pytest.raises(MediaError, match=r"record 3: "):
        strict[3]
    lenient = dataset(path, golden_processor, media_dir, skip_bad_records=True)
    assert torch.equal(lenient[1]["input_ids"], strict[4]["input_ids"])
    assert sorted(lenient.skipped) == [1, 2, 3]


def test_collated_batch_runs_through_the_model(sft_file, golden_processor, golden_model, media_dir):
    data = dataset(sft_file, golden_processor, media_dir)
    batch = SFTCollator(golden_processor.tokenizer.pad_token_id, vision_chunked_length=2)(
        [data[i] for i in range(6)]
    )
    with torch.no_grad():
        out = golden_model(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(out.loss)
    # Right padding changes nothing for a sample: its loss alone equals its share of the batch.
    single = SFTCollator(golden_processor.tokenizer.pad_token_id)([data[2]])
    with torch.no_grad():
        alone = golden_model(**single).logits[0]
    n = len(data[2]["input_ids"])
    torch.testing.assert_close(out.logits[2, :n], alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["data_prompt_response.json", "data_conversations.json"])
def test_example_data_encode(name, golden_processor, media_dir):
    data = dataset(EXAMPLES / name, golden_processor, media_dir)
    for index in range(len(data)):
        sample = data[index]
        assert bool((sample["labels"] != IGNORE_INDEX).any())


def test_cached_samples_are_built_once(sft_file, golden_processor, media_dir, tmp_path):
    copied = tmp_path / "media"
    shutil.copytree(media_dir, copied)
    cached = dataset(sft_file, golden_processor, copied, cache_samples=True)
    plain = dataset(sft_file, golden_processor, copied)
    first = [cached[index] for index in range(len(cached))]
    shutil.rmtree(copied)  # a second epoch must not need the media again
    for index, features in enumerate(first):
        again = cached[index]
        assert again.keys() == features.keys()
        assert all(torch.equal(torch.as_tensor(again[k]), torch.as_tensor(features[k])) for k in features)
    with pytest.raises(QueryError, match="record 0: .*media"):
        plain[0]
