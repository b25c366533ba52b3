"""The simple API: load, chat (plain, streaming, in a session) and batch_chat on the golden checkpoint."""

import pytest

from mossvl.errors import CheckpointError, ConfigError, QueryError
from mossvl.inference.api import batch_chat, chat, load, new_session
from mossvl.inference.engine import Engine


@pytest.fixture
def image(golden_dir):
    return str(golden_dir / "media" / "img_a_64x96.png")


def test_load_errors_name_the_problem(tmp_path, monkeypatch):
    monkeypatch.setattr("mossvl.inference.api.demo_model_dir", lambda: tmp_path / "demo_model")
    with pytest.raises(CheckpointError, match="demo model"):
        load()
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="config.json"):
        load(tmp_path)
    with pytest.raises(ConfigError, match="dtype"):
        (tmp_path / "config.json").write_text("{}")
        load(tmp_path, dtype="float8")


def test_load_golden_checkpoint(golden_dir, golden_model):
    model, processor = load(golden_dir)
    assert not model.training and model.dtype == golden_model.dtype
    assert processor.tokenizer.convert_tokens_to_ids("<|im_end|>") == 386


def test_chat_plain_streamed_and_batched_agree(golden_model, golden_processor, image):
    query = {"prompt": "Describe the image.", "images": [image]}
    text = chat(golden_model, golden_processor, query, max_new_tokens=8)
    assert text == Engine(golden_model, golden_processor).generate([query], max_new_tokens=8)[0].text
    assert "".join(chat(golden_model, golden_processor, query, stream=True, max_new_tokens=8)) == text
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": "Describe the image."}],
        }
    ]
    assert chat(golden_model, golden_processor, messages, max_new_tokens=8) == text
    answers = batch_chat(golden_model, golden_processor, [query, "Hello", query], max_new_tokens=8)
    assert answers[0] == answers[2] == text
    assert answers[1] == chat(golden_model, golden_processor, "Hello", max_new_tokens=8)


def test_chat_errors_raise_and_batch_chat_can_return_them(golden_model, golden_processor, image):
    bad = {"prompt": "Look.", "images": [image + ".missing.png"]}
    with pytest.raises(QueryError, match="not found"):
        batch_chat(golden_model, golden_processor, ["Hi", bad], max_new_tokens=2)
    answers = batch_chat(golden_model, golden_processor, ["Hi", bad], errors="return", max_new_tokens=2)
    assert answers[1].startswith("[ERROR] ") and not answers[0].startswith("[ERROR] ")
    with pytest.raises(Exception, match="not found"):
        chat(golden_model, golden_processor, bad)
    with pytest.raises(Exception, match="not found"):
        "".join(chat(golden_model, golden_processor, bad, stream=True))


def test_chat_in_a_session_keeps_the_conversation(golden_model, golden_processor, image):
    session = new_session(golden_model, golden_processor, max_new_tokens=5)
    first = chat(golden_model, golden_processor, {"prompt": "Describe.", "images": [image]}, session=session)
    second = "".join(chat(golden_model, golden_processor, "And more?", session=session, stream=True))
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    assert session.messages[1]["content"][0]["text"] == first
    assert session.messages[3]["content"][0]["text"] == second
