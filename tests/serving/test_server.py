"""The OpenAI-compatible server driven at loopback by real clients: the official ``openai`` package, raw ``httpx``
(server-sent events, errors) and the payload lmms-eval sends for video tasks. Answers must equal ``mossvl.chat``."""

import base64
import json
import time

import httpx
import openai
import pytest

import mossvl
from mossvl.data.synthetic import SAMPLES_DIR
from mossvl.inference.core import EngineConfig
from mossvl.inference.engine import Engine
from mossvl.serving.app import ServerConfig
from mossvl.serving.media import MediaPolicy

API_KEY = "test-key"
MODEL_NAME = "mossvl-demo"
IMAGE = SAMPLES_DIR / "shape.png"
VIDEO = SAMPLES_DIR / "clip.mp4"


def data_uri(path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def video_part(url: str, **settings) -> dict:
    return {"type": "video_url", "video_url": {"url": url, **settings}}


def user(*parts) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


@pytest.fixture(scope="module")
def live_server(demo_model, serve):
    model, processor = demo_model
    engine = Engine(model, processor, EngineConfig(max_batch_size=8, max_waiting=64))
    config = ServerConfig(
        model_name=MODEL_NAME,
        api_key=API_KEY,
        max_request_bytes=8 << 20,
        media=MediaPolicy(allowed_local_dir=SAMPLES_DIR, max_media_bytes=2 << 20, max_frames=32),
    )
    return serve(engine, config)


@pytest.fixture(scope="module")
def client(live_server):
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def expected(live_server, query, **kwargs) -> str:
    return mossvl.chat(live_server.model, live_server.processor, query, **kwargs)


def test_models_and_health(live_server, client):
    assert [model.id for model in client.models.list()] == [MODEL_NAME]
    health = httpx.get(live_server.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL_NAME


def test_openai_client_with_an_image(live_server, client):
    question = "What color is the shape?"
    reply = client.chat.completions.create(
        model=MODEL_NAME,
        messages=user(image_part(data_uri(IMAGE, "image/png")), {"type": "text", "text": question}),
        max_tokens=8,
    )
    answer = expected(live_server, {"prompt": question, "images": [str(IMAGE)]}, max_new_tokens=8)
    assert reply.choices[0].message.content == answer == "green"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert reply.usage.model_extra["vision_tokens"] > 0


def test_openai_client_with_a_video_file_and_streaming(live_server, client):
    question = "When does the blue circle appear?"
    messages = user(video_part(VIDEO.resolve().as_uri()), {"type": "text", "text": question})
    stream = client.chat.completions.create(
        model=MODEL_NAME, messages=messages, stream=True, stream_options={"include_usage": True}, max_tokens=8
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    answer = expected(live_server, {"prompt": question, "videos": [str(VIDEO)]}, max_new_tokens=8)
    assert text == answer == "2.3 seconds"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1


def test_logit_bias_steers_the_answer(live_server, client):
    """OpenAI's logit_bias becomes the engine's sequence_bias: a +100 token is chosen at every step."""
    question = "What color is the shape?"
    messages = user(image_part(data_uri(IMAGE, "image/png")), {"type": "text", "text": question})
    (red,) = live_server.processor.tokenizer.encode(" red", add_special_tokens=False)
    reply = client.chat.completions.create(
        model=MODEL_NAME, messages=messages, max_tokens=3, logit_bias={str(red): 100}
    )
    assert reply.choices[0].message.content == " red red red"


def test_lmms_eval_video_payload(live_server, client):
    """lmms-eval's OpenAI model: a file:// video_url and extra_body.media_io_kwargs.video.num_frames."""
    question = "What happens to the blue circle in the video?"
    reply = client.chat.completions.create(
        model=MODEL_NAME,
        messages=user(video_part(f"file://{VIDEO.resolve()}"), {"type": "text", "text": question}),
        max_tokens=8,
        temperature=0,
        extra_body={"media_io_kwargs": {"video": {"num_frames": 8}}},
    )
    query = {"prompt": question, "videos": [str(VIDEO)], "media_kwargs": {"min_frames": 8, "max_frames": 8}}
    assert reply.choices[0].message.content == expected(live_server, query, max_new_tokens=8)


def test_raw_sse_wire_format(live_server):
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": "Say hi"}],
        "stream": True,
        "max_tokens": 4,
    }
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream(
        "POST", live_server.url + "/v1/chat/completions", json=body, headers=headers
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == expected(live_server, "Say hi", max_new_tokens=4)


def post(live_server, body, key: str | None = API_KEY, raw: bytes | None = None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if raw is not None:
        headers["content-type"] = "application/json"
        return httpx.post(live_server.url + "/v1/chat/completions", content=raw, headers=headers, timeout=60)
    return httpx.post(live_server.url + "/v1/chat/completions", json=body, headers=headers, timeout=60)


def chat_body(**extra) -> dict:
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, **extra}


@pytest.mark.parametrize(
    ("change", "status", "text"),
    [
        ({"key": None}, 401, "API key"),
        ({"key": "wrong"}, 401, "API key"),
        ({"raw": b'{"model": "x", '}, 400, "not valid JSON"),
        ({"body": chat_body(model="gpt-4")}, 404, "does not exist"),
        ({"body": chat_body(n=2)}, 400, "'n'"),
        ({"body": chat_body(tools=[{"type": "function"}])}, 400, "'tools'"),
        ({"body": chat_body(best_of=3)}, 400, "'best_of'"),
        ({"body": chat_body(temperature="hot")}, 400, "temperature"),
        ({"body": chat_body(logit_bias={"red": 5})}, 400, "'logit_bias'"),
        ({"body": chat_body(logit_bias={"5": 500})}, 400, "[-100, 100]"),
        ({"body": chat_body(logit_bias={"99999999": 5})}, 400, "outside the vocabulary"),
        ({"body": chat_body(max_tokens=-3)}, 400, "max_new_tokens"),
        ({"body": {**chat_body(), "messages": []}}, 400, "messages"),
        ({"body": {**chat_body(), "messages": user({"type": "input_audio"})}}, 400, "input_audio"),
        ({"body": {**chat_body(), "messages": user(image_part("file:///etc/passwd"))}}, 400, "outside"),
        (
            {"body": {**chat_body(), "messages": user(image_part(f"{SAMPLES_DIR}/../../__init__.py"))}},
            400,
            "outside",
        ),
        ({"body": {**chat_body(), "messages": user(image_part("https://example.com/a.png"))}}, 400, "remote"),
        (
            {"body": {**chat_body(), "messages": user(image_part("data:image/png;base64,@@@"))}},
            400,
            "data URI",
        ),
        (
            {"body": {**chat_body(), "messages": user(image_part("data:image/png;base64,aGVsbG8="))}},
            400,
            "image",
        ),
        (
            {"body": {**chat_body(), "messages": user(video_part(VIDEO.as_uri(), num_frames=1000))}},
            400,
            "frame limit",
        ),
        ({"raw": b'{"pad": "' + b"x" * (9 << 20) + b'"}'}, 413, "larger than"),
        (
            {
                "body": {
                    **chat_body(),
                    "messages": user(image_part("data:image/png;base64," + "A" * (3 << 20))),
                }
            },
            413,
            "limit",
        ),
    ],
)
def test_errors_have_the_openai_shape_and_status(live_server, change, status, text):
    response = post(
        live_server, change.get("body", chat_body()), change.get("key", API_KEY), change.get("raw")
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and text in error["message"]


def test_a_disconnecting_client_cancels_its_request(live_server):
    body = chat_body(stream=True, max_tokens=5000)
    before = live_server.engine.stats()
    with httpx.stream(
        "POST",
        live_server.url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as response:
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
    deadline = time.monotonic() + 30
    while live_server.engine.stats()["running"] > before["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_server.engine.stats()["running"] == before["running"]


def test_metrics_report_requests_tokens_and_latency(live_server, client):
    client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    text = httpx.get(live_server.url + "/metrics").text
    for name in (
        'mossvl_requests_total{status="200"}',
        "mossvl_prompt_tokens_total",
        "mossvl_completion_tokens_total",
        "mossvl_vision_tokens_total",
        "mossvl_time_to_first_token_seconds_bucket",
        "mossvl_time_per_output_token_seconds_count",
        "mossvl_queue_depth",
        "mossvl_running_requests",
    ):
        assert name in text, name
