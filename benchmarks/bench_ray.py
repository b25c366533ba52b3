"""Benchmark: Ray Data batch inference with 1 and 2 workers on one query set (not a test).

The random "mid" MOSS-VL of ``common.py`` (or the shipped demo model with ``--demo``) is saved as a checkpoint
folder; a JSONL file of image and short-video queries (PNG and MP4 files beside it, ``--new-tokens`` each: the
mid model never stops early) is answered through ``mossvl.integrations.ray`` on one local Ray with 2 CPUs:

* 1 worker × 1 CPU, 1 worker × 2 CPUs (its torch uses both cores), 2 workers × 1 CPU;
* for reference, the same queries on one in-process ``Engine`` (no Ray) with 1 and 2 torch threads.

Printed per run: wall time from the dataset's start to its last row (actor start and model loading included),
time to the first result row, queries/s and generated tokens/s over the whole run and after the first row, and
the CPU time per query of the processes that ran the model (Ray workers, or this process), start-up included.
Ray's own start is timed once, apart. With ``--repeat N`` each run is made N times and the fastest kept; the
machine's load average is printed before and after (other processes on the cores skew every number).

    .venv/bin/python benchmarks/bench_ray.py [--queries 48] [--new-tokens 24] [--batch-size 8] [--repeat 1] [--demo]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import ray
import torch
from common import build_mossvl, load_processor, mid_sizes, param_millions, random_frames, write_video
from PIL import Image

from mossvl.inference.api import demo_model_dir, load
from mossvl.inference.core import EngineConfig
from mossvl.inference.engine import Engine
from mossvl.integrations.ray import predict, read_queries


def write_checkpoint(folder: Path) -> Path:
    processor = load_processor()
    model = build_mossvl(mid_sizes(), processor)
    print(f"mid MOSS-VL: {param_millions(model):.0f}M parameters")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_queries(folder: Path, count: int, new_tokens: int, seed: int = 0) -> Path:
    """Two thirds 224×224 images, one third 8-frame 1 fps MP4 clips of 128×128, one file per query."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        settings = {"generate_kwargs": {"max_new_tokens": new_tokens}}
        if i % 3 == 2:
            name = f"clip{i}.mp4"
            write_video(folder / name, random_frames(8, 128, seed=seed * 1000 + i))
            lines.append({"prompt": "What happens in the video?", "videos": [name], **settings})
        else:
            name = f"image{i}.png"
            Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(folder / name)
            lines.append({"prompt": f"Describe image {i}.", "images": [name], **settings})
    path = folder / "queries.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def ray_run(checkpoint: str, queries: Path, workers: int, cpus: int, batch_size: int) -> dict:
    started = time.perf_counter()
    results = predict(
        read_queries(queries, rows_per_block=batch_size),
        checkpoint,
        base_dir=queries.parent,
        num_workers=workers,
        batch_size=batch_size,
        cpus_per_worker=cpus,
        load_kwargs={"device": "cpu"},
    )
    arrivals, workers_used = [], set()
    with WorkerCPU() as cpu:
        for row in results.iter_rows():
            assert row["error"] is None, row["error"]
            arrivals.append((time.perf_counter() - started, row["completion_tokens"]))
            workers_used.add(row["worker"])
    # Only this run's workers count (another Ray on the machine may run map workers too).
    pids = {int(worker.rsplit(":", 1)[1]) for worker in workers_used}
    return summarize(f"Ray: {workers} worker(s) × {cpus} CPU", arrivals, len(pids), cpu.total(pids))


class WorkerCPU(threading.Thread):
    """Samples the CPU time of the Ray map workers (processes titled ``ray::MapWorker``) every 0.1 s, from the
    start of a run until its end; ``total(pids)`` sums the last reading of each of them (Linux /proc)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seconds: dict[int, float] = {}
        self.stopped = threading.Event()

    def __enter__(self) -> WorkerCPU:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopped.set()
        self.join()

    def total(self, pids: set[int]) -> float:
        return sum(self.seconds.get(pid, 0.0) for pid in pids)

    def run(self) -> None:
        while not self.stopped.wait(0.1):
            for proc in Path("/proc").iterdir():
                with contextlib.suppress(OSError, ValueError, IndexError):  # processes come and go
                    if proc.name.isdigit() and b"MapWorker" in (proc / "cmdline").read_bytes():
                        fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                        ticks = int(fields[11]) + int(fields[12])
                        self.seconds[int(proc.name)] = ticks / os.sysconf("SC_CLK_TCK")


def engine_run(checkpoint: str, queries: Path, threads: int, batch_size: int) -> dict:
    torch.set_num_threads(threads)
    started, cpu_started = time.perf_counter(), time.process_time()
    model, processor = load(checkpoint, device="cpu")
    engine = Engine(model, processor, EngineConfig(max_batch_size=batch_size))
    lines = [json.loads(line) for line in queries.read_text().splitlines()]
    # Results are read as they finish (not in submission order), as Ray hands rows over.
    handles = [engine.submit(query, base_dir=queries.parent) for query in lines]
    arrivals = []
    while handles:
        for handle in [handle for handle in handles if handle.done]:
            result = handle.result()
            assert result.error is None, result.error
            arrivals.append((time.perf_counter() - started, result.completion_tokens))
            handles.remove(handle)
        time.sleep(0.005)
    cpu = time.process_time() - cpu_started
    return summarize(f"in-process Engine, {threads} thread(s)", arrivals, 1, cpu)


def summarize(name: str, arrivals: list[tuple[float, int]], workers_used: int, cpu: float) -> dict:
    """Rates over the whole run and after the first row (rows within 50 ms of it came in the same block), and the
    CPU time of the processes that ran the model (start-up and model loading included) per query."""
    times = [t for t, _ in arrivals]
    wall, first = max(times), min(times)
    after = [(t, tokens) for t, tokens in arrivals if t > first + 0.05]
    span = wall - first
    return {
        "name": name,
        "wall": wall,
        "first": first,
        "qps": len(arrivals) / wall,
        "tps": sum(tokens for _, tokens in arrivals) / wall,
        "steady_qps": len(after) / span if after else float("nan"),
        "steady_tps": sum(tokens for _, tokens in after) / span if after else float("nan"),
        "used": workers_used,
        "cpu_per_query": cpu / len(arrivals),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1, help="runs per setting; the fastest is kept")
    parser.add_argument("--demo", action="store_true", help="the shipped demo model instead of the mid one")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]

    def fastest(run, *run_args) -> dict:
        return min((run(*run_args) for _ in range(args.repeat)), key=lambda result: result["wall"])

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = str(demo_model_dir() if args.demo else write_checkpoint(tmp / "ckpt"))
        (tmp / "data").mkdir()
        queries = write_queries(tmp / "data", args.queries, args.new_tokens)
        started = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.wait_for_min_actors_s = 600  # as run_ray_batch: all workers loaded before the first batch
        print(f"ray.init: {time.perf_counter() - started:.1f} s")
        try:
            runs = [
                fastest(ray_run, checkpoint, queries, workers, cpus, args.batch_size)
                for workers, cpus in ((1, 1), (1, 2), (2, 1))
            ]
        finally:
            ray.shutdown()
        runs += [fastest(engine_run, checkpoint, queries, threads, args.batch_size) for threads in (1, 2)]

    print(
        f"\n{args.queries} queries ({args.new_tokens} new tokens each at most), batch size {args.batch_size}, "
        f"{'demo' if args.demo else 'mid'} model, one local Ray with 2 CPUs, fastest of {args.repeat}; "
        f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after\n"
    )
    header = (
        f"{'run':<34} {'wall s':>7} {'1st row s':>9} {'q/s':>6} {'tok/s':>7} {'q/s after 1st':>13} "
        f"{'tok/s after 1st':>15} {'workers used':>12} {'CPU s/query':>11}"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        print(
            f"{run['name']:<34} {run['wall']:>7.1f} {run['first']:>9.1f} {run['qps']:>6.2f} {run['tps']:>7.1f} "
            f"{run['steady_qps']:>13.2f} {run['steady_tps']:>15.1f} {run['used']:>12} {run['cpu_per_query']:>11.2f}"
        )


if __name__ == "__main__":
    main()
