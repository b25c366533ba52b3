"""`scripts/probe_realtime_decisions.py`: one line of P(<|silence|>) per prompt, one value per frame of the stream,
read from the shipped realtime demo model."""

import subprocess
import sys
from pathlib import Path

from mossvl.data.synthetic_streams import make_stream
from mossvl.inference.api import demo_realtime_model_dir

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "probe_realtime_decisions.py"


def test_probe_prints_a_silence_probability_per_frame_and_prompt():
    prompts = ["Tell me when a blue shape appears.", "Say when anything moves."]
    shown = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", str(demo_realtime_model_dir()), "--index", "5"]
        + [arg for prompt in prompts for arg in ("--prompt", prompt)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("stream test #5 (appear, event)")
    rows = [line.strip() for line in lines if line.strip().startswith(tuple(prompts))]
    assert [row[: len(prompt)] for row, prompt in zip(rows, prompts, strict=True)] == prompts
    frames = make_stream(0, "test", 5).scene.num_frames
    for line in rows:
        values = [float(v) for v in line.split()[-frames:]]
        assert len(values) == frames and all(0 <= v <= 1 for v in values)
        assert values[0] > 0.9  # nothing has happened on the first frame: the model stays silent
