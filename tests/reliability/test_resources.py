"""Time and peak memory of the hostile cases that used to take gigabytes or minutes (a decompression bomb, a 20000²
PNG, ``min_pixels=2e8``, a 200,000-character prompt, absurd thread counts, a lying video header), measured in a
fresh process under an address-space limit: a regression fails the test instead of eating the machine."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

from corpus import CASES, GOOD_QUERIES, PEAK_BYTES_PER_CASE, SECONDS_PER_CASE, TEST_LIMITS

from mossvl import constants as C

PROBE = Path(__file__).with_name("memory_probe.py")
HEAVY = {
    "png_decompression_bomb",
    "png_over_pixel_limit",
    "min_pixels_1e12",
    "min_pixels_2e8",
    "prompt_200k_characters",
    "prompt_2m_characters",
    "extract_threads_absurd",
    "video_header_16000x16000",
    "video_5000_segments",
}


def run_probe(checkpoint: Path, tmp_path: Path, limits: dict, good: list, cases: dict, headroom: int) -> dict:
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps({"limits": limits, "good": good, "cases": cases}))
    done = subprocess.run(
        [sys.executable, str(PROBE), str(checkpoint), str(spec), str(headroom)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_heavy_cases_are_refused_fast_and_small(golden_dir, media, good_answers, tmp_path):
    cases = [case for case in CASES if case.name in HEAVY]
    assert len(cases) == len(HEAVY)
    report = run_probe(
        golden_dir,
        tmp_path,
        dataclasses.asdict(TEST_LIMITS),
        [build(media) for build in GOOD_QUERIES],
        {case.name: case.build(media) for case in cases},
        headroom=2 << 30,
    )
    for case in cases:
        first, hostile, last = report[case.name]["answers"]
        assert [first, last] == good_answers, case.name
        assert hostile.startswith(C.ERROR_PREFIX) and re.search(case.message, hostile), (case.name, hostile)
        assert report[case.name]["seconds"] < SECONDS_PER_CASE, case.name
        assert report[case.name]["peak_growth"] < PEAK_BYTES_PER_CASE, (case.name, report[case.name])


def test_a_call_that_would_not_fit_in_memory_is_refused_before_it_allocates(
    golden_dir, media, good_answers, tmp_path
):
    # These limits let min_pixels reach 2e8: only the memory check stands between the query and ~3 GB of pixels
    # in a process that may allocate 1 GiB more.
    limits = {**dataclasses.asdict(TEST_LIMITS), "max_pixels_per_frame": 1 << 30, "max_total_pixels": 1 << 31}
    query = {
        "prompt": "Describe.",
        "images": [media.good_image],
        "min_pixels": 200_000_000,
        "max_pixels": 200_000_000,
    }
    report = run_probe(
        golden_dir,
        tmp_path,
        limits,
        [build(media) for build in GOOD_QUERIES],
        {"too_big_for_memory": query},
        headroom=1 << 30,
    )
    entry = report["too_big_for_memory"]
    first, hostile, last = entry["answers"]
    assert [first, last] == good_answers
    assert re.search(
        r"would need [\d.]+ GiB for pixels but only [\d.]+ GiB of memory is available", hostile
    ), hostile
    assert entry["peak_growth"] < PEAK_BYTES_PER_CASE and entry["seconds"] < SECONDS_PER_CASE
