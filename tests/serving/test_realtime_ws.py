"""The realtime WebSocket services driven by a real client (``websockets``) at loopback: concurrent sessions,
event order, the specified errors, capacity, dropped connections, and the official HF service protocol."""

import asyncio
import io
import json

import numpy as np
import pytest
from PIL import Image
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from mossvl.data.synthetic import SAMPLES_DIR
from mossvl.inference.engine import Engine
from mossvl.processing.video import stream_frames
from mossvl.serving.app import ServerConfig
from mossvl.serving.realtime_ws import RealtimeServiceConfig

TIMEOUT = 60
CLIP = SAMPLES_DIR / "clip.mp4"


def png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


FRAMES = [(png(frame), seconds) for frame, seconds in stream_frames(CLIP, 1.0)]


@pytest.fixture(scope="module")
def server(demo_model, serve):
    model, processor = demo_model
    realtime = RealtimeServiceConfig(max_sessions=4, max_frame_bytes=200_000, allowed_local_dir=SAMPLES_DIR)
    return serve(Engine(model, processor), ServerConfig(model_name="demo", realtime=realtime))


def ws_url(server, path: str) -> str:
    return server.url.replace("http://", "ws://") + path


async def receive(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def receive_until(ws, kind: str) -> list[dict]:
    events = []
    while True:
        event = await receive(ws)
        events.append(event)
        if event["type"] == kind:
            return events


async def configure(ws, **fields) -> None:
    assert (await receive(ws))["type"] == "session.created"
    await ws.send(
        json.dumps({"type": "session.configure", "prompt": "What happens?", "max_new_tokens": 6, **fields})
    )
    assert (await receive(ws))["type"] == "session.configured"


async def stream_clip(server) -> list[dict]:
    """One session: every frame of the clip at 1 fps, a prompt, then a final frame; all events until done."""
    async with connect(ws_url(server, "/v1/video/realtime")) as ws:
        await configure(ws, include_usage=True)
        events = []
        for seq, (data, seconds) in enumerate(FRAMES):
            final = seq == len(FRAMES) - 1
            await ws.send(
                json.dumps({"type": "input.frame", "seq_no": seq, "timestamp": seconds, "final": final})
            )
            events += await receive_until(ws, "input.frame.ready")
            await ws.send(data)
            events += await receive_until(ws, "input.frame.accepted")
        events += await receive_until(ws, "session.done")
        return events


def test_four_concurrent_sessions_get_their_events_in_order(server):
    async def main():
        return await asyncio.gather(*(stream_clip(server) for _ in range(4)))

    for events in asyncio.run(main()):
        kinds = [event["type"] for event in events]
        assert kinds.count("input.frame.accepted") == len(FRAMES) and "session.ready" in kinds
        processed = [event["seq_no"] for event in events if event["type"] == "input.frame.processed"]
        assert processed == sorted(processed) and set(processed) == set(range(len(FRAMES)))
        assert kinds.count("response.done") >= 1 and kinds[-1] == "session.done"
        for index, kind in enumerate(kinds):  # every answer's text comes before its response.done
            if kind == "response.text.delta":
                assert "response.done" in kinds[index:]
        usage = [event for event in events if event["type"] == "session.usage"][-1]
        assert usage["encoder_tokens"] > 0 and usage["context_remaining"] > 0


def test_errors_leave_the_session_alive_and_capacity_is_enforced(server):
    async def main():
        async with connect(ws_url(server, "/v1/video/realtime")) as ws:
            await configure(ws)
            await ws.send("{not json")
            bad_json = await receive(ws)
            await ws.send(json.dumps({"type": "input.frame", "seq_no": 5, "timestamp": 0.0}))
            out_of_order = await receive(ws)
            await ws.send(json.dumps({"type": "input.frame", "seq_no": 0, "timestamp": 1.0}))
            await receive_until(ws, "input.frame.ready")
            await ws.send(FRAMES[0][0])
            await receive_until(ws, "input.frame.accepted")
            await ws.send(json.dumps({"type": "input.frame", "seq_no": 1, "timestamp": 0.5}))
            backwards = await receive(ws)
            await ws.send(json.dumps({"type": "input.frame", "seq_no": 1, "timestamp": 2.0}))
            await receive_until(ws, "input.frame.ready")
            await ws.send(b"\x00" * 300_000)
            too_large = await receive_until(ws, "error")
            await ws.send(b"\x89PNG")
            stray = await receive_until(ws, "error")
            # The session still works: the next frame (seq 1 again) is accepted and answered.
            await ws.send(json.dumps({"type": "input.frame", "seq_no": 1, "timestamp": 2.0}))
            await receive_until(ws, "input.frame.ready")
            await ws.send(FRAMES[1][0])
            still = await receive_until(ws, "response.done")
            # Four sessions are the limit: with this one and three more open, a fifth is refused.
            others = [await connect(ws_url(server, "/v1/video/realtime")) for _ in range(3)]
            for other in others:
                assert (await receive(other))["type"] == "session.created"
            async with connect(ws_url(server, "/v1/video/realtime")) as fifth:
                refused = await receive(fifth)
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(fifth.recv(), TIMEOUT)
            # A dropped connection frees its session: a new one now gets in.
            await others[0].close()
            await asyncio.sleep(0.5)
            async with connect(ws_url(server, "/v1/video/realtime")) as again:
                admitted = await receive(again)
            for other in others[1:]:
                await other.close()
            return bad_json, out_of_order, backwards, too_large, stray, still, refused, closed.value, admitted

    bad_json, out_of_order, backwards, too_large, stray, still, refused, closed, admitted = asyncio.run(
        main()
    )
    assert bad_json["error"]["code"] == "invalid_request"
    assert out_of_order["error"]["code"] == "invalid_request" and "seq_no" in out_of_order["error"]["message"]
    assert backwards["error"]["code"] == "invalid_request" and "timestamp" in backwards["error"]["message"]
    assert too_large[-1]["error"]["code"] == "frame_too_large"
    assert stray[-1]["error"]["code"] == "invalid_request"
    assert any(event["type"] == "input.frame.processed" for event in still)
    assert refused["error"]["code"] == "session_capacity_exceeded" and closed.rcvd.code == 1013
    assert admitted["type"] == "session.created"


def test_the_official_service_protocol(server):
    async def main():
        async with connect(ws_url(server, "/v1/realtime")) as ws:
            await ws.send(json.dumps({"type": "start", "prompt": "What happens?", "max_new_tokens": 6}))
            assert (await receive(ws))["type"] == "ready"
            await ws.send(json.dumps({"type": "ping"}))
            pong = await receive(ws)
            await ws.send(FRAMES[0][0])
            stray = await receive(ws)
            await ws.send(json.dumps({"type": "frame", "timestamp": 0.0}))
            await ws.send(FRAMES[0][0])
            ack = await receive_until(ws, "frame_ack")
            await ws.send(json.dumps({"type": "prompt", "text": ""}))
            empty = await receive_until(ws, "error")
            await ws.send(json.dumps({"type": "prompt", "text": "When does the blue circle appear?"}))
            await receive_until(ws, "prompt_ack")
            await ws.send(
                json.dumps({"type": "video", "path": str(CLIP), "sample_fps": 2, "playback_speed": 0})
            )
            video = await receive_until(ws, "video_end")
            await ws.send(json.dumps({"type": "teleport"}))
            unknown = await receive_until(ws, "error")
            await ws.send(json.dumps({"type": "stop"}))
            rest = await receive_until(ws, "session_end")
            return pong, stray, ack, empty, video, unknown, rest

    pong, stray, ack, empty, video, unknown, rest = asyncio.run(main())
    assert pong["type"] == "pong"
    assert stray["type"] == "error" and "Binary frame must follow" in stray["message"]
    assert ack[-1]["dropped_oldest"] is False and "pending_frames" in ack[-1]
    assert "must not be empty" in empty[-1]["message"]
    assert video[0]["type"] in ("video_started", "output") and video[-1]["frames_sent"] == 12
    assert "Unsupported message type" in unknown[-1]["message"]
    kinds = [event["type"] for event in rest]
    assert kinds[0] == "stopping" or "stopping" in kinds and kinds[-1] == "session_end"
    outputs = [e for e in ack + empty + video + unknown + rest if e["type"] == "output"]
    assert outputs, "the model said something about the frames"


def test_the_official_service_wants_start_first(server):
    async def main():
        async with connect(ws_url(server, "/v1/realtime")) as ws:
            await ws.send(json.dumps({"type": "prompt", "text": "hi"}))
            return await receive(ws)

    assert "first message must be" in asyncio.run(main())["message"]
