"""Demo tokenizer: Qwen2 folder layout, special-token ids, digit splitting, round trips, chat template."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from mossvl.constants import IMAGE_PLACEHOLDER, SPECIAL_TOKENS, VIDEO_PLACEHOLDER
from mossvl.data.tokenizer import build_demo_tokenizer, demo_corpus, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return build_demo_tokenizer(tmp_path_factory.mktemp("tokenizer"), vocab_size=1024)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def test_folder_layout_matches_the_golden_tokenizer(tokenizer_dir, golden_dir):
    golden = golden_dir / "tokenizer"
    assert sorted(p.name for p in tokenizer_dir.iterdir()) == sorted(p.name for p in golden.iterdir())
    ours = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    theirs = json.loads((golden / "tokenizer_config.json").read_text())
    assert set(ours) == set(theirs)
    assert {k: v for k, v in ours.items() if k != "added_tokens_decoder"} == {
        k: v for k, v in theirs.items() if k != "added_tokens_decoder"
    }
    assert (tokenizer_dir / "chat_template.jinja").read_text() == (golden / "chat_template.jinja").read_text()


def test_loads_as_qwen2_tokenizer_with_chatml_specials(tokenizer):
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == (
        "<|im_end|>",
        "<|endoftext|>",
        None,
    )


def test_special_tokens_follow_the_bpe_vocab_in_order(tokenizer, tokenizer_dir):
    bpe_size = len(json.loads((tokenizer_dir / "vocab.json").read_text()))
    assert bpe_size == 1024
    assert len(tokenizer) == bpe_size + len(SPECIAL_TOKENS)
    for offset, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.encode(token, add_special_tokens=False) == [bpe_size + offset]


def test_placeholders_are_plain_text(tokenizer):
    for placeholder in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER):
        ids = tokenizer.encode(placeholder, add_special_tokens=False)
        assert len(ids) > 1 and tokenizer.decode(ids) == placeholder


def test_digits_are_split_one_by_one(tokenizer):
    ids = tokenizer.encode("2024 and 12.5 seconds", add_special_tokens=False)
    pieces = [tokenizer.decode([i]) for i in ids]
    # As in Qwen2, the space before a digit stays a token of its own.
    assert pieces == ["2", "0", "2", "4", " and", " ", "1", "2", ".", "5", " seconds"]


@pytest.mark.parametrize(
    "text",
    [
        "When does the red circle appear?",
        "<|time_start|>29.9 seconds<|time_end|><|image_pad|>",
        "Héllo wörld 😀\n\ttabs  and   spaces\r\nnew line",
        "Mixed: 北京, Ελληνικά, العربية!",
    ],
)
def test_round_trip(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_task_words_are_single_tokens(tokenizer):
    for word in (" circle", " seconds", " triangle", " appear", "red"):
        assert len(tokenizer.encode(word, add_special_tokens=False)) == 1, word


def test_chat_template_renders_chatml(tokenizer):
    messages = [
        {"role": "user", "content": "<|image|>What color is the shape?"},
        {"role": "assistant", "content": "red"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert (
        text
        == "<|im_start|>user\n<|image|>What color is the shape?<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_training_is_deterministic_and_also_readable_by_tokenizers(tokenizer_dir):
    again = train_tokenizer(demo_corpus(), vocab_size=1024)
    assert again.to_str() == Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).to_str()
    with pytest.raises(ValueError, match="256 byte symbols"):
        train_tokenizer(["abc"], vocab_size=200)
