"""`scripts/probe_realtime_decisions.py` on the shipped realtime demo model: one line of P(<|silence|>) per prompt,
one value per frame of the stream; ``--scan``: recall and false alarms, greedy, per silence bias and per
threshold."""

import re
import subprocess
import sys
from pathlib import Path

from mossvl.data.synthetic_streams import make_stream
from mossvl.inference.api import demo_realtime_model_dir

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "probe_realtime_decisions.py"


def probe(*args: str) -> list[str]:
    """The script's output lines on the shipped realtime demo model."""
    shown = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", str(demo_realtime_model_dir()), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert shown.returncode == 0, shown.stderr
    return shown.stdout.splitlines()


def test_probe_prints_a_silence_probability_per_frame_and_prompt():
    prompts = ["Tell me when a blue shape appears.", "Say when anything moves."]
    lines = probe("--index", "5", *[arg for prompt in prompts for arg in ("--prompt", prompt)])
    assert lines[0].startswith("stream test #5 (appear, event)")
    rows = [line.strip() for line in lines if line.strip().startswith(tuple(prompts))]
    assert [row[: len(prompt)] for row, prompt in zip(rows, prompts, strict=True)] == prompts
    frames = make_stream(0, "test", 5).scene.num_frames
    for line in rows:
        values = [float(v) for v in line.split()[-frames:]]
        assert len(values) == frames and all(0 <= v <= 1 for v in values)
        assert values[0] > 0.9  # nothing has happened on the first frame: the model stays silent


def test_scan_scores_the_greedy_choices_each_bias_and_each_threshold():
    lines = probe("--scan", "10")
    assert lines[0].startswith("10 test streams, teacher-forced on silence")
    assert lines[1].strip().startswith("greedy, as sessions decode")
    figures = [re.findall(r"(\d+\.\d)%", line) for line in lines[1:]]
    assert all(len(pair) == 2 and all(0 <= float(v) <= 100 for v in pair) for pair in figures)
    biased = [line for line in lines if "--silence-bias" in line]
    thresholds = [line for line in lines if "P(silence) <" in line]
    assert len(lines) == 2 + len(biased) + len(thresholds) and len(biased) >= 5 and len(thresholds) == 9
    biases = [float(re.search(r"--silence-bias ([+-]\d+\.\d)", line).group(1)) for line in biased]
    assert biases == sorted(biases)
    for column in (0, 1):
        # A higher bias on silence speaks on a subset of frames: neither figure can rise ...
        values = [float(re.findall(r"(\d+\.\d)%", line)[column]) for line in biased]
        assert values == sorted(values, reverse=True)
        # ... and a higher threshold on P(silence) on a superset: neither figure can fall.
        values = [float(re.findall(r"(\d+\.\d)%", line)[column]) for line in thresholds]
        assert values == sorted(values)
