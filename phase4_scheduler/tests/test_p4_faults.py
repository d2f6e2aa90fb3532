"""Fault containment of the engine loop (driven directly, no HTTP; the bundled model on CPU): a failure
injected into one request — adding it, sampling it, decoding its text, checking its stop strings —
ends that request alone while the others finish with phase 0's greedy text; a failing step kills the
loop and every waiting request hears of it at once; the drain deadline; the seed's range."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from phase0_prototype import load_impl as phase0_impl
from phase0_prototype import load_model
from phase0_prototype.errors import ModelError
from phase0_prototype.sampling import SEED_RANGE, SamplingParams
from phase4_scheduler import SchedulerConfig
from phase4_scheduler import sampler as sampler_module
from phase4_scheduler.engine import BatchingConfig, BatchingEngine
from phase4_scheduler.engine_loop import EngineDead, EngineLoop, ShuttingDown
from phase4_scheduler.text_stream import MAX_STOP_LENGTH, MAX_STOP_STRINGS

PROMPTS = ["In the beginning", "The LORD is my shepherd", "Jesus wept"]
N = 12
WAIT_S = 30.0


@pytest.fixture(scope="module")
def model():
    return load_model("kjv-llama-18m", dtype="fp32")


@pytest.fixture(scope="module")
def reference(model):
    tok, ref = model.tokenizer, phase0_impl("solution").build(model, compile=False)
    return {p: tok.decode(ref.generate(tok.encode(p), N, stop_on_eos=False).sequences()[0]) for p in PROMPTS}


@pytest.fixture
def engine(model):
    return BatchingEngine(model, BatchingConfig(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64)))


class Outcome:
    """One request's events as its callback saw them (on the engine thread)."""

    def __init__(self, request, prompt: str = ""):
        self.request, self.prompt = request, prompt
        self.texts, self.done, self.finished_at = [], threading.Event(), None

    def __call__(self, ev) -> None:
        assert not self.done.is_set(), "an event after the finished one"
        self.texts.append(ev.text)
        if ev.finished:
            self.finished_at = time.monotonic()
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def wait(self, timeout: float = WAIT_S) -> "Outcome":
        assert self.done.wait(timeout), f"request {self.request.request_id} never finished"
        return self


def _request(engine, prompt: str, n: int = N, **kw):
    return engine.make_request(engine.tokenizer.encode(prompt), n, ignore_eos=True, **kw)


def _submit(loop, request, prompt: str = "") -> Outcome:
    outcome = Outcome(request, prompt)
    loop.submit(request, outcome)
    return outcome


def _wait_idle(loop, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while loop.engine.has_unfinished() or loop._inbox:
        assert time.monotonic() < deadline, "the engine never went idle"
        time.sleep(0.01)


def _injected(*_):
    raise RuntimeError("injected fault")


def _fail_third_push(stream) -> None:
    push, calls = stream.push, [0]

    def failing(token, final=False):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("injected fault")
        return push(token, final)

    stream.push = failing


@pytest.mark.parametrize("where", ["add", "sample", "detokenize", "stop check"])
def test_a_fault_in_one_request_ends_that_request_alone(engine, reference, monkeypatch, where):
    victim = _request(engine, "And God said", stop=("zqzqzq",) if where == "stop check" else (),
                      sampling=SamplingParams(1.0, seed=4242) if where == "sample" else SamplingParams())
    if where == "add":
        track = engine.sampler.track
        monkeypatch.setattr(engine.sampler, "track", lambda r: _injected() if r is victim else track(r))
    elif where == "sample":
        sample = sampler_module.sample
        monkeypatch.setattr(sampler_module, "sample", lambda logits, params, gen:
                            _injected() if params.seed == 4242 else sample(logits, params, gen))
    else:  # the victim's text: decoded lazily on the loop's thread, or at once in the step with stop strings
        add = engine.add

        def add_then_break(r):
            add(r)
            if r is victim:
                _fail_third_push(r.text_stream)

        monkeypatch.setattr(engine, "add", add_then_break)
    loop = EngineLoop(engine).start()
    try:
        others = [_submit(loop, _request(engine, p), p) for p in PROMPTS[:2]]
        failed = _submit(loop, victim)
        others.append(_submit(loop, _request(engine, PROMPTS[2]), PROMPTS[2]))
        failed.wait()
        assert victim.finish_reason == "error: RuntimeError: injected fault"
        assert victim.finished and len(victim.output_ids) < N
        after = _submit(loop, _request(engine, PROMPTS[0]), PROMPTS[0])  # the loop goes on
        for o in [*others, after]:
            o.wait()
            assert o.request.finish_reason == "length" and o.text == reference[o.prompt], o.prompt
        assert loop.error is None and loop._thread.is_alive()
        _wait_idle(loop)
        assert engine.blocks.num_free_gpu_blocks == engine.blocks.num_gpu_blocks, "the victim's blocks leaked"
    finally:
        loop.shutdown(drain=False)
    assert not loop._thread.is_alive()


def test_callbacks_on_an_event_loop_get_each_steps_events_in_one_hand_over(engine, reference):
    """Callbacks submitted with an asyncio loop (the server's path) run on that loop's thread, a step's events
    crossing in one ``call_soon_threadsafe``; every request still gets phase 0's text."""
    aloop, handed = asyncio.new_event_loop(), []
    original = aloop.call_soon_threadsafe

    def counting(fn, pairs):
        handed.append(len(pairs))
        return original(fn, pairs)

    aloop.call_soon_threadsafe = counting
    thread = threading.Thread(target=aloop.run_forever, daemon=True)
    thread.start()
    loop = EngineLoop(engine).start()
    ran_on = set()
    try:
        outcomes = [Outcome(_request(engine, p), p) for p in PROMPTS]
        for o in outcomes:
            def on_loop(ev, o=o):
                ran_on.add(threading.current_thread())
                o(ev)
            loop.submit(o.request, on_loop, aloop)
        for o in outcomes:
            assert o.wait().text == reference[o.prompt], o.prompt
        assert ran_on == {thread}
        assert max(handed) > 1 and sum(handed) == sum(len(o.texts) for o in outcomes)
    finally:
        loop.shutdown(drain=False)
        original(aloop.stop)
        thread.join(WAIT_S)
        aloop.close()


def test_a_closed_event_loop_fails_its_requests_and_the_loop_goes_on(engine, reference):
    loop, gone = EngineLoop(engine).start(), asyncio.new_event_loop()
    gone.close()  # the client's loop ended (asyncio.run returned) before its events came
    try:
        failed = _request(engine, PROMPTS[0])
        loop.submit(failed, lambda ev: None, gone)
        deadline = time.monotonic() + WAIT_S
        while not failed.finished:  # its callback can never run: watch the request itself
            assert time.monotonic() < deadline, "the request never failed"
            time.sleep(0.01)
        assert failed.finish_reason == "error: RuntimeError: its event callback failed"
        after = _submit(loop, _request(engine, PROMPTS[1]), PROMPTS[1]).wait()
        assert after.text == reference[PROMPTS[1]] and loop.error is None
        _wait_idle(loop)
        assert engine.blocks.num_free_gpu_blocks == engine.blocks.num_gpu_blocks
    finally:
        loop.shutdown(drain=False)


def test_a_failing_step_kills_the_loop_and_every_waiting_request_hears_at_once(engine, monkeypatch):
    deaths, died_at, calls = [], [], [0]
    loop = EngineLoop(engine, on_death=deaths.append)
    late = _request(engine, PROMPTS[1])
    outcomes = [_submit(loop, _request(engine, p)) for p in PROMPTS]
    step = engine.step

    def failing_step():
        calls[0] += 1
        if calls[0] == 3:
            outcomes.append(_submit(loop, late))  # still in the inbox when the loop dies
            died_at.append(time.monotonic())
            raise RuntimeError("injected step failure")
        return step()

    monkeypatch.setattr(engine, "step", failing_step)
    loop.start()
    for o in outcomes[:3]:
        o.wait()
    assert len(outcomes) == 4 and outcomes[3].wait(1.0)
    for o in outcomes:
        assert o.finished_at - died_at[0] < 1.0
        assert o.request.finish_reason == "error: the engine stopped: RuntimeError: injected step failure"
    assert isinstance(loop.error, RuntimeError) and deaths == [loop.error]
    with pytest.raises(EngineDead, match="injected step failure"):
        loop.submit(_request(engine, PROMPTS[0]), Outcome(None))
    loop._thread.join(5)
    assert not loop._thread.is_alive()
    loop.shutdown()  # returns at once on a dead loop


def test_stop_accepting_refuses_new_requests_and_fails_what_outlives_the_drain(engine, reference, monkeypatch):
    step = engine.step
    monkeypatch.setattr(engine, "step", lambda: (time.sleep(0.005), step())[1])  # 500 tokens take > 2.5 s
    loop = EngineLoop(engine).start()
    try:
        short = _submit(loop, _request(engine, PROMPTS[0]))
        long = _submit(loop, _request(engine, PROMPTS[1], 500))
        t0 = time.monotonic()
        loop.stop_accepting(drain_timeout=1.0)
        with pytest.raises(ShuttingDown):
            loop.submit(_request(engine, PROMPTS[2]), Outcome(None))
        assert short.wait().request.finish_reason == "length" and short.text == reference[PROMPTS[0]]
        long.wait(10)
        assert long.request.finish_reason == "error: the server stopped before this request finished (drain timeout)"
        assert long.finished_at - t0 >= 1.0 and len(long.request.output_ids) < 500  # ended by the deadline
        _wait_idle(loop)
        assert engine.blocks.num_free_gpu_blocks == engine.blocks.num_gpu_blocks
    finally:
        loop.shutdown()
    assert not loop._thread.is_alive()


def test_make_request_bounds_stop_strings(engine):
    ids = engine.tokenizer.encode("x")
    with pytest.raises(ValueError, match="stop strings exceed"):
        engine.make_request(ids, 4, stop=tuple(str(i) for i in range(MAX_STOP_STRINGS + 1)))
    with pytest.raises(ValueError, match="exceeds the limit"):
        engine.make_request(ids, 4, stop=("x" * (MAX_STOP_LENGTH + 1),))
    assert engine.make_request(ids, 4, stop=("a", "", "a")).stop == ("a",)


@pytest.mark.parametrize("seed", [SEED_RANGE[1] + 1, SEED_RANGE[0] - 1, 2**64, 123456789012345678901234, 1.5, True])
def test_seed_outside_int64_is_a_user_error(seed):
    with pytest.raises(ModelError, match="seed must be an integer in") as e:
        SamplingParams(1.0, seed=seed)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("seed", [SEED_RANGE[0], -1, 0, SEED_RANGE[1]])
def test_seed_within_int64_seeds_a_generator(seed):
    """The int64 bounds themselves are accepted, seed torch's generator as ``manual_seed`` does, and a
    neighbouring seed draws differently."""
    draw = lambda params: torch.rand(4, generator=params.generator("cpu"))  # noqa: E731
    assert torch.equal(draw(SamplingParams(1.0, seed=seed)), torch.rand(4, generator=torch.Generator().manual_seed(seed)))
    assert not torch.equal(draw(SamplingParams(1.0, seed=seed)), draw(SamplingParams(1.0, seed=seed ^ 1)))
