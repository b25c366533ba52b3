"""Benchmark: float32 linear layers on the CPU, PyTorch's default path (MKL) vs ``mossvl.model.linear``.

``mossvl.model.linear`` sends weights of at least 512 x 1024 elements to oneDNN and the smaller ones (here the k and
v projections, 256 x 1024) to MKL. The weights are the "mid" model's decoder projections (12 layers: q, k, v, o,
gate, up, down; 516 MiB in float32, more than the CPU caches hold, as in a real decode step). Each row count
multiplies that many input rows by every weight: 1 is a decode step of one sequence, 2-16 a decode step of a batch,
512 a prefill chunk. Both paths run in the same process on the same tensors; the ratio is MKL time / our time.

    .venv/bin/python benchmarks/bench_linear.py [--threads 2] [--repeats 10]
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
from common import mid_sizes
from torch.nn import functional as F

from mossvl.model.linear import linear, onednn_linear_available


def decoder_weights(sizes: dict) -> list[torch.Tensor]:
    hidden, inner = sizes["hidden"], sizes["intermediate"]
    kv = sizes["kv_heads"] * 64
    shapes = [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden)]
    shapes += [(inner, hidden), (inner, hidden), (hidden, inner)]
    return [torch.randn(out, inp) / inp**0.5 for _ in range(sizes["layers"]) for out, inp in shapes]


def apply_all(function, weights: list[torch.Tensor], inputs: dict[int, torch.Tensor]) -> list[torch.Tensor]:
    return [function(inputs[w.shape[1]], w) for w in weights]


def seconds(run, repeats: int) -> float:
    run()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if not onednn_linear_available():
        raise SystemExit("this PyTorch build has no oneDNN linear kernel: nothing to compare")
    torch.set_num_threads(args.threads)
    weights = decoder_weights(mid_sizes())
    megabytes = sum(w.numel() for w in weights) * 4 / 2**20
    print("# float32 linear: MKL (F.linear) vs mossvl.model.linear (oneDNN for large weights)\n")
    print(f"torch {torch.__version__}, {args.threads} threads, {len(weights)} weights, {megabytes:.0f} MiB\n")
    print("| rows | MKL ms | oneDNN ms | speed-up | max difference |\n|---:|---:|---:|---:|---:|")
    for rows in (1, 2, 4, 8, 16, 64, 512):
        inputs = {width: torch.randn(1, rows, width) for width in {w.shape[1] for w in weights}}
        repeats = max(2, args.repeats // (4 if rows >= 512 else 1))
        mkl, onednn = (
            functools.partial(apply_all, function, weights, inputs) for function in (F.linear, linear)
        )
        difference = max((a - b).abs().max().item() for a, b in zip(mkl(), onednn(), strict=True))
        slow, fast = seconds(mkl, repeats), seconds(onednn, repeats)
        print(f"| {rows} | {slow * 1000:.1f} | {fast * 1000:.1f} | {slow / fast:.2f}x | {difference:.1e} |")


if __name__ == "__main__":
    main()
