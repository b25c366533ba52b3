"""The demo model's tiny byte-level BPE tokenizer: trained on the synthetic task text, saved in the Qwen2 layout.

The tokenizer mirrors the real MOSS-VL one at a small scale: NFC normalisation, the Qwen2 pre-tokenizer split pattern
(digits split one by one), byte-level BPE over 256 byte symbols, then every MOSS-VL special token in the order of
``SPECIAL_TOKENS`` with ids right after the BPE vocabulary. ``<|image|>`` and ``<|video|>`` stay plain text (the
processor replaces them before tokenizing). The folder loads with ``transformers.AutoTokenizer`` as a Qwen2 tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from ..constants import DEFAULT_SYSTEM_PROMPTS, ENDOFTEXT, IM_END, SPECIAL_TOKENS
from ..processing.prompt import default_chat_template
from .synthetic import SPLITS, TASKS, format_seconds, make_sample

QWEN2_SPLIT_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
MODEL_MAX_LENGTH = 262144

# General English so that prompts outside the synthetic tasks still tokenize into sensible pieces.
GENERIC_PHRASES = """\
Describe the image in detail. What is happening in this video? Summarize the video in one sentence.
What can you see in the picture? Please answer the question. Thank you for your help.
The quick brown fox jumps over the lazy dog. A man is walking his dog in the park.
There is a cat sitting on the table next to a cup of coffee. Two children are playing football on the grass.
A woman is reading a book by the window while it rains outside. The car stops at the red light and then turns left.
The sky is blue and the sun is shining. It is a cold winter morning and the street is covered with snow.
How many people are in the room? Where is the bottle? Is the door open or closed? Why is the boy smiling?
First, the person opens the box. Then they take out a phone. Finally, they put it on the desk.
In the beginning of the video, a bird lands on the branch. At the end, it flies away.
The chart shows the number of visitors per month. The text at the top of the page says hello world.
I think the answer is yes. I am not sure, but it looks like a train station. This is a photo of a kitchen.
Please describe the main object, its color, its shape and its position. Explain your reasoning step by step.
The video shows a small object moving from the left side of the screen to the right side.
Can you read the sign? What time is shown on the clock? Which animal is bigger, the elephant or the mouse?
You are a helpful assistant. Answer briefly and accurately. Let me know if you have any other questions.
The weather today is sunny with a light breeze. People are sitting at tables outside the cafe.
She opened the window, looked at the garden and smiled. He carried the heavy bag up the stairs.
The documents on the desk include a receipt, an invoice and a handwritten note.
Objects appear, move and disappear. Something changes between the first frame and the last frame.
Count the apples in the basket. The answer is four. There are three birds on the wire.
A group of friends are having dinner together at a large wooden table in a restaurant.
The mountain behind the lake is covered in green forest, and a small boat floats near the shore.
Our team will present the results of the experiment during the meeting next Tuesday afternoon.
The teacher writes a math problem on the blackboard and the students copy it into their notebooks.
During the game, the player kicks the ball towards the goal, but the goalkeeper catches it.
Traffic on the highway was heavy because of an accident near the bridge this evening.
The museum displays paintings, sculptures and ancient coins from many different countries.
Please translate this paragraph into French, Spanish, German and Chinese.
My favourite fruits are bananas, oranges, strawberries and grapes, but I also like watermelon.
Cooking instructions: heat the oil, add the onions, stir for five minutes and season with salt and pepper.
The robot arm picks up the red block and places it on top of the yellow block.
Doctors recommend drinking water, sleeping well and exercising regularly to stay healthy.
Scientists observed the planet through a powerful telescope for several nights in a row.
The airplane landed safely after a long flight across the ocean, and the passengers applauded.
In the screenshot, the settings menu is open and the button labelled save is highlighted.
The company reported higher revenue this quarter thanks to strong sales of its new product.
Music was playing softly while the dancers moved gracefully across the stage.
Turn right at the next intersection, continue straight for two hundred meters and park behind the library.
The farmer feeds the chickens, milks the cows and repairs the fence before breakfast.
Wild horses gallop across the open field while thunderclouds gather over the hills.
"""


def _tokenizer_skeleton() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> Tokenizer:
    """Byte-level BPE of at most `vocab_size` entries (256 byte symbols included) plus the MOSS-VL special tokens.

    The BPE vocabulary stops short of `vocab_size` when the corpus has no more pairs to merge.
    """
    if vocab_size < 257:
        raise ValueError(f"vocab_size must exceed the 256 byte symbols, got {vocab_size}")
    tokenizer = _tokenizer_skeleton()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tokenizer


def demo_corpus(samples_per_task: int = 64, seed: int = 0) -> list[str]:
    """Training text of the demo tokenizer: synthetic questions and answers, chat roles, system prompts, every
    one-decimal timestamp up to 60 s, and general English."""
    texts = list(GENERIC_PHRASES.splitlines())
    texts += list(DEFAULT_SYSTEM_PROMPTS.values())
    texts += ["system\n", "user\n", "assistant\n"]
    texts += [format_seconds(tenths / 10) for tenths in range(600)]
    for index in range(samples_per_task * len(TASKS)):
        sample = make_sample(seed, SPLITS[0], index)
        texts += [sample.question, sample.answer]
    return texts


def _added_token_entry(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}


def save_tokenizer(tokenizer: Tokenizer, out_dir: str | os.PathLike) -> Path:
    """Write the tokenizer as a Qwen2 tokenizer folder (tokenizer.json, vocab.json, merges.txt, configs, template)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    tokenizer.model.save(str(out_dir))  # vocab.json and merges.txt, for slow-tokenizer and older loaders
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    extra = [token for token in SPECIAL_TOKENS if token != ENDOFTEXT]
    config = {
        "added_tokens_decoder": {
            str(ids[t]): {**_added_token_entry(t), "special": True} for t in SPECIAL_TOKENS
        },
        "additional_special_tokens": extra,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": IM_END,
        "errors": "replace",
        "extra_special_tokens": {},
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": ENDOFTEXT,
        "padding_side": "left",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    special_map = {
        "additional_special_tokens": extra,
        "eos_token": _added_token_entry(IM_END),
        "pad_token": _added_token_entry(ENDOFTEXT),
    }
    files = {
        "tokenizer_config.json": config,
        "special_tokens_map.json": special_map,
        "added_tokens.json": dict(sorted(ids.items())),
    }
    for name, content in files.items():
        (out_dir / name).write_text(
            json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    (out_dir / "chat_template.jinja").write_text(default_chat_template(), encoding="utf-8")
    return out_dir


def build_demo_tokenizer(out_dir: str | os.PathLike, vocab_size: int = 1024, seed: int = 0) -> Path:
    """Train the demo tokenizer on :func:`demo_corpus` and save it to `out_dir`."""
    return save_tokenizer(train_tokenizer(demo_corpus(seed=seed), vocab_size), out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mossvl.data.tokenizer", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder of the tokenizer")
    parser.add_argument(
        "--vocab-size", type=int, default=1024, help="BPE entries incl. 256 bytes (default 1024)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic corpus")
    args = parser.parse_args(argv)
    out = build_demo_tokenizer(args.out, args.vocab_size, args.seed)
    size = Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    print(f"wrote {out} ({size} tokens incl. {len(SPECIAL_TOKENS)} special)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
