"""Query normalisation (messages / prompt / conversations), segment expansion, path resolution, and rendering with
the chat template (the package default, which is the official ChatML one)."""

import pytest
from transformers import AutoTokenizer

from mossvl import constants as C
from mossvl.errors import QueryError
from mossvl.processing.conversation import conversation_from_query
from mossvl.processing.prompt import assistant_spans, default_chat_template, render_chat, video_prompt


def normalize_query(query, base_dir=None, trim_trailing_assistant=True):
    return conversation_from_query(query, base_dir, trim_trailing_assistant=trim_trailing_assistant)


def render(messages, add_generation_prompt=True):
    return render_chat(default_chat_template(), messages, add_generation_prompt)


SEG = {"video_path": "clip.mp4", "segments": [[0, 2], [5, 6]]}


def test_prompt_style_puts_images_then_videos_then_text():
    conv = normalize_query({"prompt": "Compare.", "images": ["a.png", "b.png"], "videos": ["v.mp4"]}, "/data")
    assert render(conv.messages) == (
        "<|im_start|>user\n<|image|><|image|><|video|>Compare.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert conv.media == [("image", "/data/a.png"), ("image", "/data/b.png"), ("video", "/data/v.mp4")]


def test_prompt_style_matches_the_offline_api_input_text(golden_json):
    offline = golden_json["offline_api"]["offline_batch_generate"]
    for call, result in zip(offline["call"], offline["results"], strict=True):
        conv = normalize_query({k: call[k] for k in ("prompt", "images", "videos")})
        assert render(conv.messages) == result["input_text"]


def test_prompt_with_inline_placeholders_keeps_them_in_place():
    conv = normalize_query(
        {"prompt": "Look <|image|> then <|video|>!", "images": ["a.png"], "videos": ["v.mp4"]}
    )
    assert render(conv.messages, add_generation_prompt=False) == (
        "<|im_start|>user\nLook <|image|> then <|video|>!<|im_end|>\n"
    )


def test_typed_messages_with_image_url_and_segments():
    query = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                    {"type": "text", "text": "and"},
                    {"type": "video", "video": SEG},
                    {"type": "image", "image": "rel/c.png"},
                ],
            },
        ]
    }
    conv = normalize_query(query, base_dir="/base")
    assert render(conv.messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<|image|>and<|video|><|video|><|image|><|im_end|>\n<|im_start|>assistant\n"
    )
    assert conv.images == ["https://x/y.png", "/base/rel/c.png"]
    assert conv.videos == [
        {"video_path": "/base/clip.mp4", "segments": [[0, 2]]},
        {"video_path": "/base/clip.mp4", "segments": [[5, 6]]},
    ]
    assert conv.system_prompt == "Be brief."


def test_string_content_placeholders_take_top_level_media_in_order():
    query = {
        "conversations": [
            {"role": "user", "content": "<|image|>What is it?"},
            {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "And <|image|> with <|video|>?"},
            {"role": "assistant", "content": "Dogs."},
        ],
        "images": ["1.png", "/abs/2.png"],
        "videos": ["v.mp4"],
    }
    conv = normalize_query(query, base_dir="d")
    assert conv.media == [("image", "d/1.png"), ("image", "/abs/2.png"), ("video", "d/v.mp4")]
    assert [m["role"] for m in conv.messages] == ["user", "assistant", "user"]  # trailing assistant trimmed
    kept = normalize_query(query, trim_trailing_assistant=False)
    assert render(kept.messages, add_generation_prompt=False).endswith(
        "<|im_start|>assistant\nDogs.<|im_end|>\n"
    )


def test_one_placeholder_per_raw_video_repeats_per_segment():
    conv = normalize_query({"messages": [{"role": "user", "content": "<|video|>Hi"}], "videos": [SEG]})
    assert render(conv.messages, False) == "<|im_start|>user\n<|video|><|video|>Hi<|im_end|>\n"
    one_each = normalize_query(
        {"messages": [{"role": "user", "content": "A<|video|>B<|video|>"}], "videos": [SEG]}
    )
    assert render(one_each.messages, False) == "<|im_start|>user\nA<|video|>B<|video|><|im_end|>\n"
    assert len(one_each.videos) == 2


def test_prompt_style_segmented_video_gets_one_unit_per_segment():
    conv = normalize_query({"prompt": "Q", "videos": [SEG, "w.mp4"]})
    assert render(conv.messages, False) == "<|im_start|>user\n<|video|><|video|><|video|>Q<|im_end|>\n"


def test_system_prompt_options():
    conv = normalize_query({"prompt": "Hi", "system_prompt": "S"})
    assert conv.messages[0] == {"role": "system", "content": [{"type": "text", "text": "S"}]}
    video = normalize_query({"prompt": "Hi", "videos": ["v.mp4"], "use_default_system_prompt": True})
    assert video.system_prompt == C.DEFAULT_SYSTEM_PROMPTS["video"]
    typed = normalize_query({"prompt": "Hi", "system_prompt_type": "text_image"})
    assert typed.system_prompt == C.DEFAULT_SYSTEM_PROMPTS["text_image"]
    assert normalize_query({"prompt": "Hi"}).system_prompt is None


def test_prompt_response_pairs_for_training():
    conv = normalize_query({"prompt": "Q", "response": "A"}, trim_trailing_assistant=False)
    assert (
        render(conv.messages, False) == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
    )


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            {"messages": [{"role": "user", "content": "<|image|><|image|>"}], "images": ["a.png"]},
            "has 1 entries but the text has 2",
        ),
        (
            {"messages": [{"role": "user", "content": "<|image|>"}], "images": ["a", "b"]},
            "has 2 entries but the text has 1",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}], "images": ["a.png"]},
            "has 1 entries but the text has 0",
        ),
        ({"messages": [{"role": "user", "content": "<|image|>"}]}, "has 0 entries but the text has 1"),
        ({"messages": [{"role": "user", "content": "x"}], "videos": ["a", "b"]}, "0 <|video|> placeholders"),
        (
            {"messages": [{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}]}]},
            "unknown content type 'audio'",
        ),
        ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
        ({"messages": []}, "non-empty"),
        ({"text": "hi"}, "needs 'messages'"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "no user message"),
        (
            {
                "messages": [{"role": "system", "content": "a"}, {"role": "user", "content": "b"}],
                "system_prompt": "c",
            },
            "both",
        ),
        ({"prompt": "x", "system_prompt_type": "poetry"}, "system_prompt_type"),
        ({"prompt": "x", "videos": [{"segments": [[0, 1]]}]}, "video_path"),
        ({"prompt": "x", "videos": [{"video_path": "v.mp4", "segments": [[-2, 1]]}]}, "negative"),
        ({"prompt": "x", "videos": [{"video_path": "v.mp4", "segments": [[4, 1]]}]}, "ends before it starts"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image"}]}]},
            "no 'image', 'url' or 'path' field",
        ),
    ],
)
def test_bad_queries_raise(query, message):
    with pytest.raises(QueryError, match=message.replace("|", r"\|")):
        normalize_query(query)


def test_the_default_template_is_the_checkpoints_and_renders_through_the_tokenizer(golden_dir):
    tokenizer = AutoTokenizer.from_pretrained(golden_dir / "tokenizer")
    assert (golden_dir / "tokenizer" / "chat_template.jinja").read_text() == default_chat_template()
    messages = normalize_query(
        {
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": [{"type": "image", "image": "a"}, {"type": "text", "text": "Q"}]},
                {"role": "assistant", "content": "A"},
            ]
        },
        trim_trailing_assistant=False,
    ).messages
    for add in (True, False):
        assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add) == render(
            messages, add
        )


def test_assistant_spans_cover_each_answer_and_its_end_of_turn():
    messages = normalize_query(
        {
            "messages": [
                {"role": "user", "content": "Q1"},
                {"role": "assistant", "content": "A1"},
                {"role": "user", "content": "Q2"},
                {"role": "assistant", "content": "A2 longer"},
            ]
        },
        trim_trailing_assistant=False,
    ).messages
    text = render(messages, add_generation_prompt=False)
    spans = assistant_spans(default_chat_template(), messages)
    assert [text[a:b] for a, b in spans] == ["A1<|im_end|>", "A2 longer<|im_end|>"]


def test_a_custom_template_changes_the_rendering():
    template = "{% for m in messages %}[{{ m['role'] }}] {% for i in m['content'] %}{{ i['text'] if i['type'] == 'text' else '<|' + i['type'] + '|>' }}{% endfor %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
    messages = normalize_query({"prompt": "Hi", "images": ["a.png"]}).messages
    assert render_chat(template, messages) == "[user] <|image|>Hi\n[assistant] "


def test_video_prompt_layout():
    assert video_prompt([0.0, 1.16]) == (
        "<|vision_start|><|time_start|>0.0 seconds<|time_end|><|image_pad|>"
        "<|time_start|>1.2 seconds<|time_end|><|image_pad|><|vision_end|>"
    )
