"""``serve --ray`` on a local CPU Ray cluster (started once for the module): 2 engine replicas of the bundled
model behind the OpenAI ingress give the offline engine's greedy text to the official ``openai`` client
(completions, chat, a stream); requests spread over both replicas; a replica killed under load is replaced,
and each of its in-flight requests either succeeds on another replica (a plain request, retried by the
ingress) or ends with a clear error (a stream: a 503 error event then ``[DONE]``) — none hangs (client
timeouts); in a process of its own, SIGTERM drains (503, then error answers past the drain timeout) and
exits 0; the flags and the config file give one-line errors and the same deployment."""

import argparse
import json
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import ray
from engine_helpers import check_stream_and_chat, fresh_text_prompts
from ray import serve

from phase0_prototype.errors import ModelError
from shared import ray_serve
from shared import serve as plain_serve
from shared.engine import EngineConfig, LLMEngine
from shared.ray_deploy import REPLICA_HEADER, TRIED_HEADER

MODEL = "kjv-llama-18m"
CONFIG = EngineConfig(model=MODEL, max_num_seqs=8, max_num_batched_tokens=256)
REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120  # a client's bound: a request that hangs fails the test instead of blocking it


@pytest.fixture(scope="module")
def cluster():
    url = ray_serve.deploy(CONFIG, ray_serve.RaySpec(replicas=2), port=ray_serve.listening_port("127.0.0.1", 0),
                           drain_timeout=5)
    yield url
    ray_serve.shutdown()


@pytest.fixture(scope="module")
def reference():
    """The offline engine on the same config: no HTTP, no Ray (``LLMEngine.generate``)."""
    return LLMEngine(CONFIG)


def replicas() -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "#EngineServer#" in a["name"]}


def complete(url: str, prompt: str, tokens: int) -> httpx.Response:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    return httpx.post(url + "/v1/completions", json=body, timeout=TIMEOUT_S)


def test_openai_client_gets_the_engines_greedy_text(cluster, reference):
    (first, second), seed = fresh_text_prompts(2)
    tokens = random.randint(8, 24)
    client = openai.OpenAI(base_url=cluster + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT_S)
    greedy = {"max_tokens": tokens, "temperature": 0, "extra_body": {"ignore_eos": True}}
    want = [o.text for o in reference.generate([first, second], max_tokens=tokens, ignore_eos=True)]
    for prompt, text in zip((first, second), want, strict=True):
        assert client.completions.create(model=MODEL, prompt=prompt, **greedy).choices[0].text == text, seed
    check_stream_and_chat(client, reference, MODEL, (first, second), want, greedy, seed)
    assert [m.id for m in client.models.list()] == [MODEL]
    assert httpx.get(cluster + "/health", timeout=TIMEOUT_S).json() == {"status": "ok"}
    refused = httpx.post(cluster + "/v1/completions", json={"model": "other", "prompt": "x"}, timeout=TIMEOUT_S)
    assert refused.status_code == 404 and "does not exist" in refused.json()["error"]["message"]  # phase 4's


def test_ray_answers_like_the_direct_server(cluster):
    """The same bytes of text as ``titaninfer serve``'s own app (build_app + uvicorn) on the same config."""
    from phase4_scheduler.serve import ServerThread

    prompts, seed = fresh_text_prompts(2)
    app, _ = plain_serve.build_app(CONFIG)
    with ServerThread(app) as direct:
        for prompt in prompts:
            assert complete(cluster, prompt, 12).json()["choices"][0]["text"] == \
                complete(direct.url, prompt, 12).json()["choices"][0]["text"], seed


def test_requests_spread_over_both_replicas(cluster):
    prompts, _ = fresh_text_prompts(8)
    with ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(lambda p: complete(cluster, p, 48), prompts))
    assert all(r.status_code == 200 for r in answers)
    assert {r.headers[REPLICA_HEADER] for r in answers} == replicas() and len(replicas()) == 2


def _stream(url: str, prompt: str, tokens: int, started: threading.Event, out: dict) -> None:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=TIMEOUT_S) as r:
        out["replica"], events = r.headers[REPLICA_HEADER], []
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                started.set()
    out["done"] = events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    out["error"] = chunks[-1]["error"]["message"] if "error" in chunks[-1] else None
    out["text"] = "".join(c["choices"][0]["text"] for c in chunks if "choices" in c)


def test_a_killed_replica_is_replaced_and_its_requests_retried_or_ended_clearly(cluster, reference):
    prompts, seed = fresh_text_prompts(4)
    tokens = 440  # (of the 512-token context: long enough to be under way when the replica dies)
    want = dict(zip(prompts, (o.text for o in reference.generate(prompts, max_tokens=tokens, ignore_eos=True)),
                    strict=True))
    before = replicas()
    assert len(before) == 2
    streams = [({}, threading.Event()) for _ in prompts]
    plain: dict[str, httpx.Response] = {}
    threads = [threading.Thread(target=_stream, args=(cluster, p, tokens, started, out))
               for p, (out, started) in zip(prompts, streams, strict=True)]
    threads += [threading.Thread(target=lambda p=p: plain.__setitem__(p, complete(cluster, p, tokens)))
                for p in prompts]
    for t in threads:
        t.start()
    for _, started in streams:
        assert started.wait(TIMEOUT_S), "a stream never started"
    victim = streams[0][0]["replica"]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    for t in threads:
        t.join(TIMEOUT_S + 10)
    assert not any(t.is_alive() for t in threads), "a request hung"

    # the streams: those on the victim end with the ingress's error event and [DONE]; the others complete
    on_victim = [out for out, _ in streams if out["replica"] == victim]
    for out, _ in streams:
        assert out["done"], out
        if out in on_victim:
            assert out["error"] and "replica serving this request died" in out["error"], out
        else:
            assert out["error"] is None, out
    for prompt, (out, _) in zip(prompts, streams, strict=True):
        if out["error"] is None:
            assert out["text"] == want[prompt], seed
    # the plain requests: all answered with the full greedy text, those taken by the victim after a retry
    retried = 0
    for prompt, r in plain.items():
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == want[prompt], (seed, r.text[:200])
        tried = r.headers[TRIED_HEADER].split(",")  # ("?": a replica that died before taking it)
        first_on_victim = tried[0] in (victim, "?")
        assert r.headers[REPLICA_HEADER] == tried[-1] and tried[-1] in before - {victim}, tried
        assert len(tried) > 1 if first_on_victim else len(tried) == 1, tried
        retried += first_on_victim
    outcome = {"streams_ended_with_error": len(on_victim), "streams_completed": len(streams) - len(on_victim),
               "plain_retried_ok": retried, "plain_ok_first_try": len(plain) - retried}
    print("killed replica's in-flight requests:", outcome)

    deadline = time.monotonic() + TIMEOUT_S  # (a bound for a replacement that never comes, not a speed target)
    while not (len(replicas()) == 2 and victim not in replicas() and _running() == 2):
        assert time.monotonic() < deadline, (replicas(), serve.status())
        time.sleep(0.5)
    newcomer = replicas() - before
    assert len(newcomer) == 1
    prompts, _ = fresh_text_prompts(8)
    with ThreadPoolExecutor(len(prompts)) as pool:
        served = {r.headers[REPLICA_HEADER] for r in pool.map(lambda p: complete(cluster, p, 48), prompts)}
    assert newcomer <= served


def _running() -> int:
    deployment = serve.status().applications[ray_serve.APP_NAME].deployments["EngineServer"]
    return deployment.replica_states.get("RUNNING", 0) if deployment.status == "HEALTHY" else 0


def parse(*argv: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    plain_serve.add_arguments(ap)
    ray_serve.add_arguments(ap)
    return ap.parse_args(list(argv))


def one_line_error(args: argparse.Namespace, config: EngineConfig = CONFIG) -> str:
    with pytest.raises(ModelError) as e:
        ray_serve.run(args, config)  # (every refusal comes before Ray starts)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_flags_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    assert "add --ray" in one_line_error(parse("--replicas", "2"))
    assert "add --ray" in one_line_error(parse("--ray-config", str(bad)))
    assert "integer >= 1" in one_line_error(parse("--ray", "--replicas", "0"))
    assert "not both" in one_line_error(parse("--ray", "--replicas", "2", "--max-replicas", "3"))
    assert "not both" in one_line_error(parse("--ray", "--replicas", "2", "--min-replicas", "1"))
    assert "needs --max-replicas" in one_line_error(parse("--ray", "--min-replicas", "2"))
    assert "below --min-replicas" in one_line_error(parse("--ray", "--min-replicas", "3", "--max-replicas", "2"))
    assert "cannot read" in one_line_error(parse("--ray", "--ray-config", str(bad)))
    for text, message in [("replica: 2", "unknown key 'replica'"), ("- 1", "must hold a mapping"),
                          ("{replicas: [", "is not YAML or JSON"), ("engine: {max_seqs: 3}", "engine key 'max_seqs'"),
                          ("replicas: two", "integer >= 1"), ("replicas: 2\nmin_replicas: 1", "not both"), ("max_replicas: 2\ntarget_ongoing_requests: 0", "> 0")]:
        bad.write_text(text)
        assert message in one_line_error(parse("--ray", "--ray-config", str(bad))), text
    assert "keep one" in one_line_error(parse("--ray", "--ray-config", str(bad), "--replicas", "2"))
    assert "--drain-timeout" in one_line_error(parse("--ray", "--drain-timeout", "-1"))
    assert "drop phase4=off" in one_line_error(parse("--ray"), EngineConfig(impl=["solution", "phase4=off"]))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ModelError, match=f"cannot listen on 127.0.0.1:{port} .*pick another --port"):
            ray_serve.listening_port("127.0.0.1", port)
    with pytest.raises(ModelError, match="need 4 GPUs, Ray sees 2"):
        ray_serve.check_resources(EngineConfig(tp=2), ray_serve.RaySpec(replicas=2), {"GPU": 2.0, "CPU": 8.0}, "cuda")
    with pytest.raises(ModelError, match="3 CPU replicas need a core each, Ray sees 2"):
        ray_serve.check_resources(CONFIG, ray_serve.RaySpec(replicas=None, max_replicas=3), {"CPU": 2.0}, "cpu")


@pytest.mark.parametrize("form", ["yaml", "json"])
def test_the_config_file_deploys_like_the_flags(tmp_path, form):
    n = random.randint(2, 16)
    data = {"min_replicas": 0, "max_replicas": 3, "engine": {"max_num_seqs": n}}
    path = tmp_path / f"ray.{form}"
    path.write_text(json.dumps(data) if form == "json" else
                    f"min_replicas: 0\nmax_replicas: 3\nengine:\n  max_num_seqs: {n}\n")
    from_file = ray_serve.spec_from_args(parse("--ray", "--ray-config", str(path)), CONFIG)
    from_flags = ray_serve.spec_from_args(parse("--ray", "--min-replicas", "0", "--max-replicas", "3"),
                                          EngineConfig(model=MODEL, max_num_seqs=n, max_num_batched_tokens=256))
    assert from_file == from_flags
    options = ray_serve.deployment_options(*from_file, device="cpu", cpus=6, drain_timeout=7)
    assert options["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 3, "target_ongoing_requests": n}
    assert options["max_ongoing_requests"] == 2 * n and options["ray_actor_options"] == {"num_cpus": 2}
    assert options["graceful_shutdown_timeout_s"] == 7 and "num_replicas" not in options
    fixed = ray_serve.deployment_options(*ray_serve.spec_from_args(parse("--ray", "--replicas", "2"), EngineConfig(tp=2)),
                                         device="cuda", cpus=6, drain_timeout=7)
    assert fixed["num_replicas"] == 2 and fixed["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 2}
    assert ray_serve.spec_from_args(parse("--ray"), CONFIG)[0] == ray_serve.RaySpec(replicas=1)


def test_sigterm_drains_then_shuts_ray_down_with_exit_0():
    """A process of its own (its own local Ray): the banner names the URL; at SIGTERM new requests get 503,
    those outliving ``--drain-timeout`` end with an error answer (a stream: an error event, then [DONE]),
    and the process exits 0."""
    proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "serve", "--model", MODEL, "--ray", "--replicas", "1", "--port",
                             "0", "--max-num-seqs", "4", "--drain-timeout", "1"], cwd=REPO, stderr=subprocess.PIPE,
                            text=True)
    try:
        err = []
        for line in proc.stderr:
            err.append(line)
            if m := re.search(r"serving kjv-llama-18m on (http://127\.0\.0\.1:\d+)/v1 \(Ray Serve: 1 engine", line):
                break
        assert m, "".join(err)
        url = m.group(1)
        threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
        assert complete(url, "Jesus wept", 4).status_code == 200
        streamed, started = {}, threading.Event()
        plain: list[httpx.Response] = []
        threads = [threading.Thread(target=_stream, args=(url, "In the beginning", 480, started, streamed)),
                   threading.Thread(target=lambda: plain.append(complete(url, "And God said", 480)))]
        for t in threads:
            t.start()
        assert started.wait(TIMEOUT_S)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        late = complete(url, "x", 4)
        code = proc.wait(TIMEOUT_S)
        for t in threads:
            t.join(TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert code == 0, "".join(err)
    assert late.status_code == 503 and "shutting down" in late.json()["error"]["message"]
    assert plain[0].status_code == 503 and "drain timeout" in plain[0].json()["error"]["message"], plain[0].text
    assert streamed["done"] and "drain timeout" in streamed["error"], streamed
