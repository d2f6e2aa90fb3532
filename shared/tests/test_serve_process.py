"""``titaninfer serve`` as a process: SIGTERM with requests in flight drains (every accepted request
completes with its full text, new ones are refused, exit 0 within the drain timeout); a dead engine
makes the server exit 1 with one line; ``--api-key``; a seed outside int64 is one ``error:`` line. The drain
tests run with one process and with ``--api-server-count 2`` (API processes in front of the engine process)."""

from __future__ import annotations

import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from phase0_prototype.errors import ModelError
from phase4_scheduler.serve import DrainingServer
from shared.cli import main
from shared.serve import is_loopback

REPO = Path(__file__).resolve().parents[2]
MODEL = "kjv-llama-18m"
PROMPTS = ["In the beginning", "The LORD is my shepherd", "Jesus wept", "And God said"]
TOKENS = 96
DRAIN_S = 20


class Served:
    """``titaninfer serve --port 0`` in a subprocess; its stderr lines gathered by a thread."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "serve", "--model", MODEL, "--port", "0",
                                      "--max-num-seqs", "8", *args], cwd=REPO, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.err: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._wait_banner()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.err.append(line)
            self.lines.put(line)

    def _wait_banner(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, "".join(self.err)
                continue
            if m := re.search(r"on (http://127\.0\.0\.1:\d+)/v1", line):
                url = m.group(1)
                while time.monotonic() < deadline:  # the port listens once uvicorn runs
                    try:
                        if httpx.get(url + "/health", timeout=5).status_code == 200:
                            return url
                    except httpx.TransportError:
                        time.sleep(0.05)
        raise AssertionError("the server did not start: " + "".join(self.err))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _ask(url: str, prompt: str, stream: bool, tokens: int, headers: dict) -> tuple[int, str, str | None]:
    """(status, text, finish reason) of one completion; a stream that does not end with ``[DONE]`` after
    its chunks counts as cut (status -1); a failed one gives the error event's message as its text."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
            "stream": stream}
    if not stream:
        r = httpx.post(url + "/v1/completions", json=body, headers=headers, timeout=60)
        if r.status_code != 200:
            return r.status_code, r.json()["error"]["message"], None
        choice = r.json()["choices"][0]
        return r.status_code, choice["text"], choice["finish_reason"]
    with httpx.stream("POST", url + "/v1/completions", json=body, headers=headers, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line]
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    if not lines or lines[-1] != "data: [DONE]":
        return -1, "", None
    if "error" in chunks[-1]:
        return r.status_code, chunks[-1]["error"]["message"], "error"
    return r.status_code, "".join(c["choices"][0]["text"] for c in chunks), chunks[-1]["choices"][0]["finish_reason"]


def _in_flight(srv: Served, jobs: list[tuple[str, bool]], tokens: int, headers: dict) -> tuple[list, dict]:
    """Start ``jobs`` (prompt, stream) in threads and return once all of them run in the batch."""
    results: dict[tuple[str, bool], tuple[int, str, str | None]] = {}

    def one(prompt: str, stream: bool) -> None:
        results[prompt, stream] = _ask(srv.url, prompt, stream, tokens, headers)

    threads = [threading.Thread(target=one, args=job) for job in jobs]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        metrics = httpx.get(srv.url + "/metrics", timeout=10).text
        if re.search(rf"^titaninfer_running_requests {len(jobs)}\.0$", metrics, re.M):
            return threads, results
        time.sleep(0.02)
    raise AssertionError(f"the {len(jobs)} requests never ran together")


def _terminate(srv: Served, threads: list, timeout: float) -> tuple[int, float, int]:
    """SIGTERM: (exit code within ``timeout`` s, requests unfinished at the signal)."""
    srv.proc.send_signal(signal.SIGTERM)
    unfinished = sum(t.is_alive() for t in threads)
    code = srv.proc.wait(timeout)
    for t in threads:
        t.join(10)
    return code, unfinished


@pytest.mark.parametrize("api_servers", ["1", "2"])
def test_sigterm_drains_requests_in_flight_and_exits_0(api_servers):
    """The drained texts must equal the same server's undisturbed answers (that those equal phase 0's
    greedy text is test_p4_server's business); with two API processes in front of the engine as with one."""
    srv = Served("--drain-timeout", str(DRAIN_S), "--api-key", "s3cret", "--api-server-count", api_servers)
    auth = {"Authorization": "Bearer s3cret"}
    try:
        assert httpx.post(srv.url + "/v1/completions", json={}, timeout=10).status_code == 401
        reference = {}
        for p in PROMPTS:
            status, reference[p], reason = _ask(srv.url, p, False, TOKENS, auth)
            assert (status, reason) == (200, "length") and reference[p], reference[p]
        jobs = [(p, s) for p in PROMPTS for s in (False, True)]
        threads, results = _in_flight(srv, jobs, TOKENS, auth)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        try:
            late = httpx.post(srv.url + "/v1/completions", json={"model": MODEL, "prompt": "x"}, headers=auth,
                              timeout=10).status_code
        except httpx.TransportError:
            late = "refused"
        assert late in (503, "refused")
        code, unfinished = _terminate(srv, threads, DRAIN_S + 5)  # (a second SIGTERM changes nothing)
    finally:
        srv.kill()
    assert unfinished == len(threads), "the requests finished before the signal: nothing was tested"
    assert code == 0, "".join(srv.err)  # (within DRAIN_S + 5 s: _terminate's wait)
    assert sorted(results) == sorted(jobs)
    for (prompt, stream), (status, text, reason) in sorted(results.items()):
        assert (status, reason) == (200, "length") and text == reference[prompt], (prompt, stream, text)


@pytest.mark.parametrize("api_servers", ["1", "2"])
def test_requests_outliving_the_drain_timeout_get_an_error_answer_not_a_cut(api_servers):
    srv = Served("--drain-timeout", "1", "--api-server-count", api_servers)
    try:
        jobs = [(p, s) for p in PROMPTS[:2] for s in (False, True)]
        threads, results = _in_flight(srv, jobs, 400, {})
        code, unfinished = _terminate(srv, threads, 10)
    finally:
        srv.kill()
    assert unfinished == len(threads), "the requests finished before the signal: nothing was tested"
    assert code == 0, (code, "".join(srv.err))  # the drain ends at 1 s; _terminate waits 10 s at most
    assert sorted(results) == sorted(jobs)
    for (_, stream), (status, message, _) in results.items():
        # a plain request gets an error answer (5xx), a stream an error event then [DONE]: none is cut
        assert (status == 200 if stream else status in (500, 503)) and "drain timeout" in message, (status, message)


def test_a_dead_engine_stops_the_server_with_exit_1(capsys, monkeypatch):
    """The engine thread dies on the first step: the request in flight gets 503, the process exits 1
    with one line naming the cause (so that a supervisor restarts it)."""
    from phase4_scheduler.engine import BatchingEngine

    step = BatchingEngine.step

    def broken_step(self):  # the serving loop's steps fail; the warm-up's (on the starting thread) run
        if threading.current_thread().name == "engine-loop":
            raise RuntimeError("injected device fault")
        return step(self)

    monkeypatch.setattr(BatchingEngine, "step", broken_step)
    code: list[int] = []
    runner = threading.Thread(target=lambda: code.append(main(["serve", "--model", MODEL, "--port", "0",
                                                                "--max-num-seqs", "4"])))
    runner.start()
    err, deadline = "", time.monotonic() + 120
    while not (m := re.search(r"on (http://127\.0\.0\.1:\d+)/v1", err)):
        assert runner.is_alive() and time.monotonic() < deadline, err
        time.sleep(0.05)
        err += capsys.readouterr().err
    url = m.group(1)
    while True:
        try:
            r = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 4}, timeout=30)
            break
        except httpx.ConnectError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert r.status_code == 503 and "injected device fault" in r.json()["error"]["message"]
    runner.join(30)
    assert not runner.is_alive() and code == [1]
    err += capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == ["error: the engine stopped (RuntimeError: injected device fault): the server exits for a "
                      "restart"], err


def test_a_step_failing_in_the_warm_up_is_one_error_line_before_the_port_opens(capsys, monkeypatch):
    from phase4_scheduler.engine import BatchingEngine

    def broken_step(self):
        raise RuntimeError("injected device fault")

    monkeypatch.setattr(BatchingEngine, "step", broken_step)
    assert main(["serve", "--model", MODEL, "--port", "0", "--max-num-seqs", "4"]) != 0
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the warm-up failed (RuntimeError: injected device fault)" in errors[0], err
    assert "Traceback" not in err and "/v1" not in err  # never announced a port


def test_seed_outside_int64_is_one_error_line(capsys):
    assert main(["generate", "--model", MODEL, "--seed", "123456789012345678901234", "--temperature", "1"]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line] == [line for line in err.splitlines() if line.startswith(
        "error: seed must be an integer in")] and err.count("error:") == 1, err


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("127.0.0.2", True), ("0.0.0.0", False), ("::", False),
                                            ("10.1.2.3", False), ("example.com", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_a_port_in_use_is_a_user_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ModelError, match=f"cannot listen on 127.0.0.1:{port} .*pick another --port"):
            DrainingServer(None, SimpleNamespace(on_death=None), port=port).bind()
