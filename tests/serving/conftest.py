"""Real servers at loopback for the serving tests: uvicorn in a thread over an engine of the demo model."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import mossvl
from mossvl.inference.engine import Engine
from mossvl.serving.app import ServerConfig, create_app
from mossvl.serving.background import BackgroundServer


@dataclass
class RunningServer:
    url: str
    engine: Engine
    model: object
    processor: object


@pytest.fixture(scope="module")
def demo_model():
    return mossvl.load(dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def serve():
    """``serve(engine, config)`` starts a server at loopback; every server started is stopped afterwards."""
    started = []

    def start(engine: Engine, config: ServerConfig) -> RunningServer:
        server = BackgroundServer(create_app(engine, config)).start()
        started.append(server)
        return RunningServer(server.url, engine, engine.model, engine.processor)

    yield start
    for server in started:
        server.stop()
