"""Schemathesis against the server: every operation of the schema the app serves, with bodies that fit
the schema (positive) and bodies that break it (negative), must get no server error (5xx) and answers
that conform to the schema (status codes, content types, bodies, headers); a broken body must be
refused with a 4xx.

A live server on 127.0.0.1 (uvicorn's HTTP parsing included; schemathesis's in-process ASGI client
would leave its event-loop thread running) over a tiny engine: the bundled model with a 32-token
context and 4 sequences keeps every generated request short. Positive bodies name the served model,
so that they reach the engine instead of the 404. The cases are drawn with Hypothesis from
``APIOperation.as_strategy`` (schemathesis's pytest loader does not run on pytest 9).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from phase0_prototype.sources import load_model
from phase4_scheduler.engine import BatchingConfig, BatchingEngine
from phase4_scheduler.engine_loop import EngineLoop
from phase4_scheduler.plan import SchedulerConfig
from phase4_scheduler.serve import ServerThread
from phase4_scheduler.server import create_app

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode, checks  # noqa: E402

MODEL = "kjv-llama-18m"
EXAMPLES = 25  # per operation and mode
# Not positive_data_acceptance: a schema-valid body may still not fit the context, or name token ids
# outside the vocabulary, and the server refuses it (400) as it must.
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.response_headers_conformance]


@pytest.fixture(scope="module")
def server():
    engine = BatchingEngine(load_model(MODEL, dtype="fp32", device="cpu"),
                       BatchingConfig(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64), max_model_len=32))
    with ServerThread(create_app(EngineLoop(engine).start(), MODEL)) as srv:
        yield srv


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_conforms_to_the_schema(server, mode):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} == {"/health", "/metrics", "/v1/models", "/v1/completions",
                                              "/v1/chat/completions"}
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not operation.body:
            continue  # nothing to break: no body, no parameters
        @given(case=operation.as_strategy(mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def conforms(case):
            if mode is GenerationMode.POSITIVE and isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = MODEL
            extra = [checks.negative_data_rejection] if mode is GenerationMode.NEGATIVE else []
            case.call_and_validate(base_url=server.url, checks=CHECKS + extra)

        conforms()
