"""Fixtures of the server tests: the bundled model behind a live server (4 seats, a 64-token budget, a queue of
16), one per test module, and the official ``openai`` client pointed at it. A module needing another server
defines its own ``server``."""

from __future__ import annotations

import openai
import pytest

from phase4_scheduler import SchedulerConfig
from phase4_scheduler.serve import ServerThread, build_app

MODEL = "kjv-llama-18m"


@pytest.fixture(scope="module")
def server():
    app, loop = build_app(MODEL, scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64), max_queue=16)
    with ServerThread(app) as srv:
        srv.loop = loop
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
