"""Run hostile queries in a fresh process under an address-space limit and report, per query, its answers, the
time it took and how far it raised the peak resident memory. Used by test_resources.py.

Usage: python memory_probe.py CHECKPOINT CASES.json HEADROOM_BYTES. CASES.json holds ``{"limits": {...},
"good": [query, query], "cases": {name: query}}``; the report (JSON on stdout) maps each name to
``{"answers", "seconds", "peak_growth"}`` where ``answers`` are the batch's three answers (the hostile query in
the middle).
"""

import json
import resource
import sys
import time
import warnings
from pathlib import Path

import torch


def status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
    checkpoint, cases_file, headroom = sys.argv[1], sys.argv[2], int(sys.argv[3])
    spec = json.loads(Path(cases_file).read_text())
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")

    import mossvl
    from mossvl.model import MossVLForConditionalGeneration
    from mossvl.processing.limits import InputLimits
    from mossvl.processing.processor import MossVLProcessor

    model = MossVLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    processor = MossVLProcessor.from_pretrained(checkpoint, limits=InputLimits(**spec["limits"]))
    good = spec["good"]
    mossvl.batch_chat(model, processor, good, errors="return", max_new_tokens=3)  # warm up every lazy import
    # From here on, an allocation beyond the headroom fails instead of taking the machine.
    limit = status_bytes("VmSize") + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    report = {}
    for name, query in spec["cases"].items():
        Path("/proc/self/clear_refs").write_text("5")
        start_rss, start = status_bytes("VmHWM"), time.monotonic()
        answers = mossvl.batch_chat(
            model, processor, [good[0], query, good[1]], errors="return", max_new_tokens=3
        )
        report[name] = {
            "answers": answers,
            "seconds": time.monotonic() - start,
            "peak_growth": status_bytes("VmHWM") - start_rss,
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
