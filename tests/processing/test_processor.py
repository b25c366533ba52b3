"""MossVLProcessor: batching, padding, blank image, labels, strict placeholder checks, prepare(), save/load."""

import numpy as np
import pytest
import torch

from mossvl import constants as C
from mossvl.errors import CheckpointError, ConfigError, QueryError
from mossvl.processing.processor import MossVLProcessor, split_media_kwargs

IMG = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def proc(golden_dir) -> MossVLProcessor:
    return MossVLProcessor.from_pretrained(golden_dir)


def chat(user: str, reply: str | None = None) -> str:
    text = f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    return text + (f"{reply}<|im_end|>\n" if reply is not None else "")


def test_output_keys_shapes_and_dtypes(proc, clips):
    out = proc(
        [chat("<|image|>A"), chat("B <|video|> C <|image|>")], images=[IMG, IMG], videos=[str(clips["cfr"])]
    )
    assert set(out) == {
        "input_ids",
        "attention_mask",
        "pixel_values",
        "grid_thw",
        "cross_attention_mask",
        "media_nums_per_sample",
    }
    assert out["input_ids"].dtype == torch.int64 and out["attention_mask"].dtype == torch.int64
    assert out["pixel_values"].dtype == torch.float32 and out["pixel_values"].shape[1] == 768
    assert out["grid_thw"].tolist() == [[1, 4, 6], [5, 4, 4], [1, 4, 6]]  # text order across the batch
    assert out["media_nums_per_sample"].tolist() == [1, 2]
    assert out["cross_attention_mask"].shape == (2, 1, out["input_ids"].shape[1], 6)
    assert out["pixel_values"].shape[0] == int((out["grid_thw"].prod(dim=1)).sum())
    n_pads = (out["input_ids"] == proc.image_token_id).sum(dim=1).tolist()
    assert n_pads == [1, 6]


def test_left_and_right_padding(proc):
    texts = [chat("short"), chat("a much longer question <|image|>")]
    left = proc(texts, images=[IMG], padding_side="left")
    right = proc(texts, images=[IMG], padding_side="right")
    assert left["attention_mask"][0, 0] == 0 and right["attention_mask"][0, -1] == 0
    for b in range(2):
        lm, rm = left["attention_mask"][b].bool(), right["attention_mask"][b].bool()
        assert torch.equal(left["input_ids"][b][lm], right["input_ids"][b][rm])
        assert torch.equal(left["cross_attention_mask"][b, 0][lm], right["cross_attention_mask"][b, 0][rm])
        assert left["cross_attention_mask"][b, 0][~lm].all()
    assert (left["input_ids"][0][~left["attention_mask"][0].bool()] == proc.pad_token_id).all()


def test_text_only_sample_gets_the_blank_image(proc):
    out = proc(chat("no media"))
    assert out["grid_thw"].tolist() == [[1, 8, 8]] and out["media_nums_per_sample"].tolist() == [1]
    assert not out["pixel_values"].any() and out["cross_attention_mask"].all()


def test_labels_cover_assistant_replies_and_their_im_end(proc, clips):
    queries = [
        {
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "<|image|>Q1"},
                {"role": "assistant", "content": "A1"},
                {"role": "user", "content": "<|video|>Q2"},
                {"role": "assistant", "content": "A2 is longer"},
            ],
            "images": [IMG],
            "videos": [str(clips["cfr"])],
        },
        {"prompt": "hi", "response": "yo"},
    ]
    out = proc.prepare(queries, add_generation_prompt=False, return_labels=True)
    labels, ids = out["labels"], out["input_ids"]
    tok = proc.tokenizer
    assert tok.decode(ids[0][labels[0] != C.IGNORE_INDEX]) == "A1<|im_end|>A2 is longer<|im_end|>"
    assert tok.decode(ids[1][labels[1] != C.IGNORE_INDEX]) == "yo<|im_end|>"
    kept = labels != C.IGNORE_INDEX
    assert torch.equal(labels[kept], ids[kept])
    assert not kept[out["attention_mask"] == 0].any()


def test_labels_never_cover_vision_tokens_inside_an_assistant_turn(proc):
    query = {
        "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "See <|image|> ok"}],
        "images": [IMG],
    }
    out = proc.prepare(query, add_generation_prompt=False, return_labels=True)
    supervised = out["input_ids"][0][out["labels"][0] != C.IGNORE_INDEX]
    assert proc.image_token_id not in supervised.tolist()
    assert proc.tokenizer.decode(supervised) == "See  ok<|im_end|>"


def test_labels_need_the_assistant_spans(proc):
    with pytest.raises(QueryError, match="assistant spans"):
        proc(chat("Q", "A"), return_labels=True)


@pytest.mark.parametrize(
    ("text", "images", "videos", "message"),
    [
        (chat("<|image|>"), [], [], "1 <|image|> for 0 image"),
        (chat("x"), [IMG], [], "0 <|image|> for 1 image"),
        (chat("<|video|>"), [], [], "1 <|video|> for 0 video"),
        (chat("<|image_pad|> raw"), [], [], "contains <|image_pad|>"),
        (chat("<|vision_start|>"), [], [], "contains <|vision_start|>"),
    ],
)
def test_placeholder_mismatches_raise(proc, text, images, videos, message):
    with pytest.raises(QueryError, match=message.replace("|", r"\|")):
        proc(text, images=images, videos=videos)


def test_segmented_video_counts_as_one_unit_per_segment(proc, clips):
    video = {"video_path": str(clips["cfr"]), "segments": [[0, 1], [2, 3]]}
    out = proc(chat("<|video|><|video|>"), videos=[video])
    assert out["grid_thw"][:, 0].tolist() == [1, 1] and out["media_nums_per_sample"].tolist() == [2]
    with pytest.raises(QueryError, match="2 video unit"):
        proc(chat("<|video|>"), videos=[video])


def test_media_kwargs_reach_the_sub_processors(proc, clips):
    out = proc(
        chat("<|image|><|video|>"),
        images=[IMG],
        videos=[str(clips["cfr"])],
        min_pixels=1024,
        max_pixels=32 * 64,
        video_fps=2,
    )
    assert out["grid_thw"].tolist() == [[1, 2, 2], [10, 2, 2]]
    out = proc(chat("<|video|>"), videos=[str(clips["cfr"])], video_maxlen=3, video_fps=4)
    assert out["grid_thw"][0, 0] == 3
    with pytest.raises(QueryError, match="unknown media kwarg 'fps'"):
        proc(chat("x"), fps=3)


def test_split_media_kwargs_aliases():
    image, video = split_media_kwargs(
        {"shortest_edge": 1, "longest_edge": 2, "video_minlen": 3, "video_max_pixels": 4}
    )
    assert image == {"min_pixels": 1, "max_pixels": 2}
    assert video == {"min_pixels": 1, "max_pixels": 2, "min_frames": 3, "video_max_pixels": 4}


def test_prepare_matches_rendered_call(proc, golden_dir):
    queries = [
        {"prompt": "Describe the image.", "images": ["media/img_a_64x96.png"]},
        {"messages": [{"role": "user", "content": "What is the color of the sky?"}]},
    ]
    prepared = proc.prepare(queries, base_dir=str(golden_dir))
    direct = proc(
        [chat("<|image|>Describe the image."), chat("What is the color of the sky?")],
        images=[str(golden_dir / "media/img_a_64x96.png")],
    )
    for key in direct:
        assert torch.equal(prepared[key], direct[key]), key


def test_prepare_accepts_message_lists_and_checks_media_kwargs(proc, golden_dir):
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert torch.equal(proc.prepare(messages)["input_ids"], proc(chat("hi"))["input_ids"])
    assert proc.prepare([messages, messages])["input_ids"].shape[0] == 2
    with pytest.raises(QueryError, match=r"query #1: media_kwargs differ .*video_fps"):
        proc.prepare(
            [
                {"prompt": "a", "media_kwargs": {"video_fps": 1}},
                {"prompt": "b", "media_kwargs": {"video_fps": 2}},
            ]
        )
    with pytest.raises(QueryError, match=r"query #0: field 'images' has 2 entries but the text has 1"):
        proc.prepare({"prompt": "<|image|>", "images": ["x.png", "y.png"]})


def test_prepare_training_labels(proc):
    out = proc.prepare({"prompt": "Q", "response": "A"}, add_generation_prompt=False, return_labels=True)
    kept = out["input_ids"][0][out["labels"][0] != C.IGNORE_INDEX]
    assert proc.tokenizer.decode(kept) == "A<|im_end|>"


def test_special_token_ids_come_from_the_tokenizer(proc, golden_json):
    ids = golden_json["special_token_ids"]
    assert proc.token_ids == ids
    assert proc.image_token_id == 396 and proc.vision_start_token_id == 393


def test_save_and_load_round_trip(proc, tmp_path, clips):
    proc.save_pretrained(tmp_path)
    for name in (
        "preprocessor_config.json",
        "video_preprocessor_config.json",
        "chat_template.jinja",
        "tokenizer.json",
    ):
        assert (tmp_path / name).is_file(), name
    again = MossVLProcessor.from_pretrained(tmp_path)
    assert again.image_processor.to_dict() == proc.image_processor.to_dict()
    assert again.video_processor.to_dict() == proc.video_processor.to_dict()
    assert again.chat_template == proc.chat_template
    args = ([chat("<|image|>x<|video|>")],)
    a = proc(*args, images=[IMG], videos=[str(clips["cfr"])])
    b = again(*args, images=[IMG], videos=[str(clips["cfr"])])
    for key in a:
        assert torch.equal(a[key], b[key])


def test_load_overrides_and_errors(golden_dir, tmp_path):
    proc = MossVLProcessor.from_pretrained(
        golden_dir, frame_extract_num_threads=2, multi_image_max_pixels=1 << 20
    )
    assert (
        proc.video_processor.num_extract_threads == 2
        and proc.image_processor.multi_image_max_pixels == 1 << 20
    )
    with pytest.raises(ConfigError, match="unknown processor settings"):
        MossVLProcessor.from_pretrained(golden_dir, colour=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        MossVLProcessor.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="needs a tokenizer"):
        MossVLProcessor()


def test_single_media_items_need_no_list(proc, clips):
    a = proc(chat("<|image|><|video|>"), images=IMG, videos=str(clips["cfr"]))
    b = proc(chat("<|image|><|video|>"), images=[IMG], videos=[str(clips["cfr"])])
    for key in a:
        assert torch.equal(a[key], b[key])
