"""Record layer of fine-tuning: lazy JSON/JSONL indexing, both record formats (normalised by the conversation module
shared with inference), placeholders, paths and errors."""

from __future__ import annotations

import json

import pytest

from mossvl.errors import QueryError
from mossvl.processing.conversation import conversation_from_record as normalize_record
from mossvl.processing.prompt import default_chat_template, render_chat
from mossvl.training.records import index_records, read_record

IMAGE = "img_a_64x96.png"
VIDEO = "vid_b_30f_6fps_40x90.mp4"


def render(conversation) -> str:
    return render_chat(default_chat_template(), conversation.messages, add_generation_prompt=False)


@pytest.fixture
def media_dir(golden_dir):
    return golden_dir / "media"


def records_of(path):
    return [read_record(path, span, i) for i, span in enumerate(index_records(path))]


def test_json_list_index_matches_parse(tmp_path):
    records = [
        {"prompt": 'brackets ] [ } { and "quotes", commas', "response": "a\\b\n"},
        {"messages": [{"role": "user", "content": "x"}], "n": [1, [2, {"k": "]"}]]},
        {"prompt": "ünïcödé ✓", "response": "ok"},
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records, indent=2, ensure_ascii=False), encoding="utf-8")
    assert records_of(path) == records


def test_jsonl_index_skips_blank_lines(tmp_path):
    records = [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records[:1]) + "\n\n  \n" + json.dumps(records[1]))
    assert records_of(path) == records


def test_format_told_by_content_not_extension(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "d"}\n')
    assert len(index_records(path)) == 2
    path.write_text('  \n[{"prompt": "a", "response": "b"}]')
    assert len(index_records(path)) == 1


def test_empty_list_and_truncated_list(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("[ ]")
    assert len(index_records(path)) == 0
    path.write_text('[{"prompt": "a", "response": "b"}, {"prompt": "c"')
    with pytest.raises(QueryError, match="not closed"):
        index_records(path)


def test_malformed_json_record_names_index(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", response: b}\n[1, 2]\n')
    spans = index_records(path)
    with pytest.raises(QueryError, match="record 1: invalid JSON"):
        read_record(path, spans[1], 1)
    with pytest.raises(QueryError, match="record 2: expected a JSON object, got list"):
        read_record(path, spans[2], 2)


def test_prompt_format_prepends_placeholders(media_dir):
    record = {
        "prompt": "Describe.",
        "response": "Done.",
        "system_prompt": "Be brief.",
        "images": [IMAGE, IMAGE],
        "videos": [VIDEO, {"video_path": VIDEO, "segments": [[0, 1], [2, 3.5]]}],
    }
    conv = normalize_record(record, 0, media_dir)
    assert render(conv) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<|image|>\n<|image|>\n<|video|>\n<|video|>\n<|video|>\nDescribe.<|im_end|>\n"
        "<|im_start|>assistant\nDone.<|im_end|>\n"
    )
    path = str(media_dir / VIDEO)
    assert conv.images == [str(media_dir / IMAGE)] * 2
    assert conv.videos == [
        path,
        {"video_path": path, "segments": [[0, 1]]},
        {"video_path": path, "segments": [[2, 3.5]]},
    ]


def test_prompt_with_explicit_placeholders_is_kept(media_dir):
    record = {"prompt": "Look <|image|> here.", "response": "Ok.", "images": [IMAGE]}
    assert render(normalize_record(record, 0, media_dir)).startswith("<|im_start|>user\nLook <|image|> here.")


def test_conversations_format_and_sharegpt_aliases(media_dir):
    record = {
        "conversations": [
            {"from": "human", "value": "<|image|>What?"},
            {"from": "gpt", "value": "A."},
            {"role": "user", "content": "More <|video|>"},
            {"role": "assistant", "content": "B."},
        ],
        "images": [IMAGE],
        "videos": [VIDEO],
    }
    conv = normalize_record(record, 3, media_dir)
    assert [m["role"] for m in conv.messages] == ["user", "assistant", "user", "assistant"]
    assert render(conv).count("More <|video|>") == 1
    assert conv.videos == [str(media_dir / VIDEO)]


def test_one_placeholder_per_segmented_video_is_expanded(media_dir):
    record = {
        "messages": [
            {"role": "user", "content": "A <|video|> B <|video|>"},
            {"role": "assistant", "content": "C"},
        ],
        "videos": [{"video_path": VIDEO, "segments": [[0, 1], [1, 2], [2, 3]]}, VIDEO],
    }
    conv = normalize_record(record, 0, media_dir)
    assert render(conv).startswith("<|im_start|>user\nA <|video|><|video|><|video|> B <|video|>")
    assert len(conv.videos) == 4


def test_relative_paths_resolve_against_base_dir(media_dir, tmp_path):
    record = {"prompt": "p", "response": "r", "images": [IMAGE]}
    assert normalize_record(record, 0, media_dir).images == [str(media_dir / IMAGE)]
    with pytest.raises(QueryError, match=r"record 7: field 'images\[0\]': file not found"):
        normalize_record(record, 7, tmp_path)
    url = {"prompt": "p", "response": "r", "images": ["https://example.com/a.png"]}
    assert normalize_record(url, 0, tmp_path).images == ["https://example.com/a.png"]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompt": "p"}, r"record 5: field 'response' is missing"),
        ({"prompt": "", "response": "r"}, r"record 5: field 'prompt' must be a non-empty string"),
        ({"response": "r"}, r"record 5: a query needs 'messages', 'conversations' or 'prompt'"),
        ({"prompt": "p", "response": "r", "messages": []}, r"record 5: has both 'prompt' and 'messages'"),
        ({"prompt": "p", "response": "r", "images": "x"}, r"record 5: field 'images\[0\]': file not found"),
        ({"prompt": "p", "response": "r", "images": 3}, r"record 5: field 'images' must be a list"),
        (
            {"prompt": "<|image|>p", "response": "r"},
            r"record 5: field 'images' has 0 entries but the text has 1",
        ),
        ({"conversations": "hi"}, r"record 5: field 'conversations' must be a non-empty list"),
        ({"messages": [{"role": "bot", "content": "x"}]}, r"record 5: field 'messages\[0\].role' must be"),
        (
            {"messages": [{"role": "user", "content": 1}]},
            r"record 5: field 'messages\[0\].content' must be a",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}]},
            r"record 5: the record has no assistant turn",
        ),
        (
            {"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "s"}]},
            r"record 5: a system turn may only come first",
        ),
        (
            {"prompt": "p", "response": "r", "videos": [{"path": VIDEO}]},
            r"record 5: field 'videos\[0\]' is a dict without 'video_path'",
        ),
        (
            {"prompt": "p", "response": "r", "videos": [{"video_path": VIDEO, "segments": [[3, 1]]}]},
            r"record 5: field 'videos\[0\].segments': .*ends before it starts",
        ),
        (
            {
                "messages": [{"role": "user", "content": "<|video|>"}, {"role": "assistant", "content": "a"}],
                "videos": [VIDEO, VIDEO],
            },
            r"record 5: field 'videos' has 2 video units .* but the text has 1",
        ),
    ],
)
def test_malformed_records_name_index_and_field(media_dir, record, message):
    with pytest.raises(QueryError, match=message):
        normalize_record(record, 5, media_dir)
