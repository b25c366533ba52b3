"""Print how sure a realtime model is that it should stay silent after each frame of a synthetic stream, under
several prompts: does the choice to speak depend on what was asked, or only on whether something changed?

For each prompt, the stream with silence after every frame is run through the model in one forward pass, as in
fine-tuning, and the probability of ``<|silence|>`` is read at each frame's last token, where the model chooses
between staying silent and starting a reply (given that it stayed silent on every earlier frame). Example::

    python scripts/probe_realtime_decisions.py --model src/mossvl/assets/demo_realtime_model --index 5 \\
        --prompt "Tell me when a blue shape appears." --prompt "Tell me when a red shape appears."

``--scan N`` does the same for the first N streams of the split under their own prompts and scores the choices as
``mossvl eval --streams`` does (an event is detected when the model would speak on its frame or up to two frames
later; a false alarm is an event-free stream in which it would speak), greedily, greedily with a range of
``--silence-bias`` values, and for a range of thresholds on P(silence). It takes seconds rather than minutes. False alarms are exact (until a model speaks, a session feeds
what the scan feeds); recall is close but not equal, since after a reply a session feeds that reply.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

import mossvl
from mossvl import constants as C
from mossvl.data.synthetic_streams import evaluation_record, make_stream, training_record, write_stream_video
from mossvl.evaluation.streams import (
    DEFAULT_TOLERANCE_FRAMES,
    StreamCase,
    StreamMetrics,
    load_streams,
    metrics,
    score_stream,
)
from mossvl.training.data import SFTCollator, SFTDataset

# Logit biases on <|silence|> that --scan scores (mossvl realtime / eval --silence-bias).
SILENCE_BIASES = (-4.0, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.5, 1.0, 2.0)


def decision_probabilities(model, processor, stream, folder: Path) -> tuple[list[float], list[float]]:
    """P(<|silence|>) and the probability of the likeliest other token after each frame of `stream`,
    teacher-forced on the training sample of `stream`; the clip must already be at ``folder/clip.mp4`` (prompts
    vary, the clip does not)."""
    (folder / "sample.jsonl").write_text(json.dumps(training_record(stream, "clip.mp4")) + "\n")
    sample = SFTDataset(folder / "sample.jsonl", processor)[0]
    batch = SFTCollator(processor.tokenizer.pad_token_id)([sample])
    batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits[0]
    silence, frame_end = processor.tokenizer.convert_tokens_to_ids([C.SILENCE, C.VISION_END])
    decisions = (sample["input_ids"] == frame_end).nonzero().flatten()
    probabilities = logits[decisions].softmax(-1)
    silent = probabilities[:, silence].tolist()
    probabilities[:, silence] = 0
    return silent, probabilities.max(-1).values.tolist()


def detection(choices: list[tuple[StreamCase, list[bool]]]) -> StreamMetrics:
    """How `mossvl eval --streams` scores these choices to speak after each frame of each stream."""
    results = [
        score_stream(case, ["x" if speak else "" for speak in speaks], DEFAULT_TOLERANCE_FRAMES)
        for case, speaks in choices
    ]
    return metrics(results)


def scan(model, processor, args: argparse.Namespace, folder: Path) -> None:
    """Score the first ``args.scan`` streams of the split greedily and for thresholds on P(silence)."""
    probabilities, records = [], []
    for index in tqdm(range(args.scan), desc="streams"):
        stream = make_stream(args.seed, args.split, index)
        write_stream_video(stream, folder / "clip.mp4")
        probabilities.append(decision_probabilities(model, processor, replace(stream, replies={}), folder))
        records.append(evaluation_record(stream, "clip.mp4", str(index)))
    # Read back as `mossvl eval` reads its stream file, so that the events are the ones it scores.
    (folder / "streams.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    cases = load_streams(folder / "streams.jsonl", check_media=False)
    choices = [(case, silent, other) for case, (silent, other) in zip(cases, probabilities, strict=True)]
    print(f"{args.scan} {args.split} streams, teacher-forced on silence (see the module docstring):")
    greedy = detection(
        [(case, [s < o for s, o in zip(silent, other, strict=True)]) for case, silent, other in choices]
    )
    print(
        f"  greedy, as sessions decode:  recall {greedy.recall:6.1%}  "
        f"false alarms {greedy.false_alarm_rate:6.1%} of {greedy.event_free_streams}"
    )
    for bias in SILENCE_BIASES:
        scale = math.exp(bias)
        scored = detection(
            [
                (case, [s * scale < o for s, o in zip(silent, other, strict=True)])
                for case, silent, other in choices
            ]
        )
        print(
            f"  greedy, --silence-bias {bias:+4.1f}:  recall {scored.recall:6.1%}  "
            f"false alarms {scored.false_alarm_rate:6.1%}"
        )
    for threshold in [step / 10 for step in range(1, 10)]:
        scored = detection([(case, [s < threshold for s in silent]) for case, silent, _ in choices])
        print(
            f"  speak when P(silence) < {threshold:.1f}: recall {scored.recall:6.1%}  "
            f"false alarms {scored.false_alarm_rate:6.1%}"
        )


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
    parser.add_argument("--scan", type=int, help="score the first N streams of the split instead")
    args = parser.parse_args(argv)
    model, processor = mossvl.load(str(args.model))
    model.float().eval()
    with tempfile.TemporaryDirectory() as folder:
        if args.scan:
            scan(model, processor, args, Path(folder))
            return 0
        for index in args.index or [0, 5]:
            stream = make_stream(args.seed, args.split, index)
            print(
                f"stream {args.split} #{index} ({stream.task}, {stream.kind}); replies due: {stream.replies}"
            )
            print("  P(silence) after each frame:")
            write_stream_video(stream, Path(folder) / "clip.mp4")
            for prompt in args.prompt or [stream.prompts[0][1]]:
                silent, _ = decision_probabilities(
                    model, processor, replace(stream, prompts=[(0, prompt)], replies={}), Path(folder)
                )
                print(f"  {prompt:<45} " + " ".join(f"{p:.2f}" for p in silent))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
