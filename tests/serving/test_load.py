"""Load at loopback: 50 concurrent streaming clients mixing images, videos and text, some malformed, some hanging up
early. Every well-formed request gets the right answer, every malformed one its 4xx, memory stays bounded and the
server stays up."""

import asyncio
import base64
import json
from pathlib import Path

import httpx
import pytest

import mossvl
from mossvl.data.synthetic import SAMPLES_DIR
from mossvl.inference.core import EngineConfig
from mossvl.inference.engine import Engine
from mossvl.serving.app import ServerConfig
from mossvl.serving.media import MediaPolicy

MODEL_NAME = "demo"
CLIENTS = 50


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def workload() -> list[tuple[str, dict, str | None]]:
    """(kind, request body, query for the expected answer) of each client."""
    image = "data:image/png;base64," + base64.b64encode((SAMPLES_DIR / "shapes.png").read_bytes()).decode()
    video = (SAMPLES_DIR / "clip.mp4").resolve().as_uri()
    kinds = {
        "image": (
            [
                {"type": "image_url", "image_url": {"url": image}},
                {"type": "text", "text": "How many shapes are in the image?"},
            ],
            {"prompt": "How many shapes are in the image?", "images": [str(SAMPLES_DIR / "shapes.png")]},
        ),
        "video": (
            [
                {"type": "video_url", "video_url": {"url": video}},
                {"type": "text", "text": "When does the blue circle appear?"},
            ],
            {"prompt": "When does the blue circle appear?", "videos": [str(SAMPLES_DIR / "clip.mp4")]},
        ),
        "text": ([{"type": "text", "text": "Describe a shape."}], {"prompt": "Describe a shape."}),
    }
    clients = []
    for i in range(CLIENTS):
        if i % 10 == 3:
            clients.append(
                ("malformed", {"model": MODEL_NAME, "messages": [{"role": "robot", "content": "x"}]}, None)
            )
        elif i % 10 == 7:
            body = {
                "model": MODEL_NAME,
                "messages": [{"role": "user", "content": "Talk."}],
                "max_tokens": 4000,
            }
            clients.append(("hangup", {**body, "stream": True}, None))
        else:
            kind = ("image", "video", "text")[i % 3]
            content, query = kinds[kind]
            body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": content}], "max_tokens": 12}
            clients.append((kind, {**body, "stream": True}, json.dumps(query)))
    return clients


async def run_client(http: httpx.AsyncClient, url: str, kind: str, body: dict):
    async with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, None
        text, count = "", 0
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            count += 1
            if kind == "hangup" and count == 3:
                return 200, None  # leaving the block closes the connection mid-stream
            text += json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        return 200, text


@pytest.mark.usefixtures("single_thread")
def test_fifty_concurrent_streaming_clients(demo_model, serve):
    model, processor = demo_model
    engine = Engine(model, processor, EngineConfig(max_batch_size=8, max_waiting=256))
    server = serve(
        engine, ServerConfig(model_name=MODEL_NAME, media=MediaPolicy(allowed_local_dir=SAMPLES_DIR))
    )
    clients = workload()
    answers = {
        query: mossvl.chat(model, processor, json.loads(query), max_new_tokens=12)
        for _, _, query in clients
        if query is not None
    }
    before = rss_mb()

    async def main():
        async with httpx.AsyncClient(timeout=120) as http:
            return await asyncio.gather(
                *(run_client(http, server.url, kind, body) for kind, body, _ in clients)
            )

    outcomes = asyncio.run(main())
    for (kind, _, query), (status, text) in zip(clients, outcomes, strict=True):
        if kind == "malformed":
            assert status == 400
        elif kind == "hangup":
            assert status == 200
        else:
            assert (status, text) == (200, answers[query]), kind
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    for _ in range(200):  # hung-up requests are cancelled at the next step
        if engine.stats()["running"] == 0:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert engine.stats()["running"] == 0 and engine.stats()["waiting"] == 0
    assert rss_mb() - before < 400
