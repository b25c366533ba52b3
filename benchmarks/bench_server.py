"""Benchmark: the HTTP server under concurrent streaming clients vs the same requests sent one at a time (not a test).

Starts ``mossvl serve``'s app in this process (uvicorn at loopback) over the shipped demo model (or the random
"mid" model with ``--mid``) and sends a fixed mix of image, video and text requests through the OpenAI streaming
API with 1, 4 and 16 concurrent clients. Printed per concurrency: requests/s, generated tokens/s, TTFT p50/p95
(request sent to first content chunk) and the ratios to concurrency 1 (the requests sent one at a time).

    .venv/bin/python benchmarks/bench_server.py [--requests 48] [--threads 2] [--mid]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time

import httpx
import torch
from common import build_mossvl, load_processor, mid_sizes, percentile

import mossvl
from mossvl.data.synthetic import SAMPLES_DIR
from mossvl.inference.core import EngineConfig
from mossvl.inference.engine import Engine
from mossvl.serving.app import ServerConfig, create_app
from mossvl.serving.background import BackgroundServer
from mossvl.serving.media import MediaPolicy

MODEL_NAME = "bench"


def requests(count: int, max_tokens: int) -> list[dict]:
    image = "data:image/png;base64," + base64.b64encode((SAMPLES_DIR / "shapes.png").read_bytes()).decode()
    video = (SAMPLES_DIR / "clip.mp4").resolve().as_uri()
    contents = [
        [
            {"type": "image_url", "image_url": {"url": image}},
            {"type": "text", "text": "How many shapes are there?"},
        ],
        [{"type": "video_url", "video_url": {"url": video}}, {"type": "text", "text": "What happens?"}],
        "Describe a red square in one sentence.",
    ]
    # A request number in every prompt: no two requests share a whole prompt, so each one is really prefilled
    # (media features still come from the engine's media cache after their first use, as in a live server).
    return [
        {
            "model": MODEL_NAME,
            "messages": [
                {"role": "system", "content": f"Request {i}."},
                {"role": "user", "content": contents[i % 3]},
            ],
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for i in range(count)
    ]


async def one(http: httpx.AsyncClient, url: str, body: dict) -> tuple[float, float, int]:
    """(send time, first-content time, completion tokens) of one streamed request."""
    sent, first, tokens = time.monotonic(), None, 0
    async with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = first or time.monotonic()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return sent, first or time.monotonic(), tokens


async def run(url: str, bodies: list[dict], concurrency: int) -> dict:
    queue: asyncio.Queue = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    timings = []

    async def worker(http):
        while not queue.empty():
            timings.append(await one(http, url, queue.get_nowait()))

    start = time.monotonic()
    async with httpx.AsyncClient(timeout=600) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    wall = time.monotonic() - start
    ttft = [first - sent for sent, first, _ in timings]
    return {
        "rps": len(bodies) / wall,
        "tps": sum(tokens for _, _, tokens in timings) / wall,
        "p50": percentile(ttft, 50),
        "p95": percentile(ttft, 95),
        "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mid", action="store_true", help="the random mid model instead of the demo model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.mid:
        processor = load_processor()
        model = build_mossvl(mid_sizes(), processor)
    else:
        model, processor = mossvl.load(dtype="float32", device="cpu")
    engine = Engine(model, processor, EngineConfig(max_batch_size=16))
    config = ServerConfig(model_name=MODEL_NAME, media=MediaPolicy(allowed_local_dir=SAMPLES_DIR))
    bodies = requests(args.requests, args.max_tokens)
    print("# mossvl server benchmark")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {'mid random' if args.mid else 'demo'} "
        f"model; {args.requests} streamed requests (image / video / text), up to {args.max_tokens} tokens each"
    )
    with BackgroundServer(create_app(engine, config)) as server:
        asyncio.run(run(server.url, bodies[:3], 1))  # warm-up
        results = {c: asyncio.run(run(server.url, bodies, c)) for c in (1, 4, 16)}
    base = results[1]
    print(
        "| concurrency | requests/s | tokens/s | TTFT p50 s | TTFT p95 s | wall s | throughput vs one at a time |\n"
        "|---:|---:|---:|---:|---:|---:|---:|"
    )
    for concurrency, r in results.items():
        print(
            f"| {concurrency} | {r['rps']:.2f} | {r['tps']:.1f} | {r['p50']:.3f} | {r['p95']:.3f} | {r['wall']:.1f} | "
            f"{r['tps'] / base['tps']:.2f}x |"
        )


if __name__ == "__main__":
    main()
