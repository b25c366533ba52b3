"""Print how sure a realtime model is that it should stay silent after each frame of a synthetic stream, under
several prompts: does the choice to speak depend on what was asked, or only on whether something changed?

For each prompt, the stream with silence after every frame is run through the model in one forward pass, as in
fine-tuning, and the probability of ``<|silence|>`` is read at each frame's last token, where the model chooses
between staying silent and starting a reply (given that it stayed silent on every earlier frame). Example::

    python scripts/probe_realtime_decisions.py --model src/mossvl/assets/demo_realtime_model --index 5 \\
        --prompt "Tell me when a blue shape appears." --prompt "Tell me when a red shape appears."
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

import mossvl
from mossvl import constants as C
from mossvl.data.synthetic_streams import make_stream, training_record, write_stream_video
from mossvl.training.data import SFTCollator, SFTDataset


def silence_probabilities(model, processor, stream, folder: Path) -> list[float]:
    """P(<|silence|>) after each frame of `stream`, teacher-forced on the training sample of `stream`."""
    write_stream_video(stream, folder / "clip.mp4")
    (folder / "sample.jsonl").write_text(json.dumps(training_record(stream, "clip.mp4")) + "\n")
    sample = SFTDataset(folder / "sample.jsonl", processor)[0]
    batch = SFTCollator(processor.tokenizer.pad_token_id)([sample])
    batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits[0]
    silence, frame_end = processor.tokenizer.convert_tokens_to_ids([C.SILENCE, C.VISION_END])
    decisions = (sample["input_ids"] == frame_end).nonzero().flatten()
    return logits[decisions].softmax(-1)[:, silence].tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--index", type=int, action="append", help="stream index (repeatable; default 0 and 5)"
    )
    parser.add_argument(
        "--prompt", action="append", help="prompt to try (repeatable; default: the stream's own)"
    )
    args = parser.parse_args(argv)
    model, processor = mossvl.load(str(args.model))
    model.float().eval()
    with tempfile.TemporaryDirectory() as folder:
        for index in args.index or [0, 5]:
            stream = make_stream(args.seed, args.split, index)
            print(
                f"stream {args.split} #{index} ({stream.task}, {stream.kind}); replies due: {stream.replies}"
            )
            print("  P(silence) after each frame:")
            for prompt in args.prompt or [stream.prompts[0][1]]:
                probabilities = silence_probabilities(
                    model, processor, replace(stream, prompts=[(0, prompt)], replies={}), Path(folder)
                )
                print(f"  {prompt:<45} " + " ".join(f"{p:.2f}" for p in probabilities))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
