"""The ``titaninfer`` CLI: generate streams and reports speed; chat reads turns from stdin through the chat
template and ends cleanly at end of input; serve answers like the engine; report runs phase checks with
progress; user mistakes end with exactly one ``error:`` line and exit code 2, never a traceback."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from shared.cli import main

REPO = Path(__file__).resolve().parents[2]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_streams_text_and_speed(capsys):
    code, out, err = cli(capsys, "generate", "--model", "random:tiny", "--prompt", "Hello", "--max-new-tokens", "12")
    assert code == 0 and out.startswith("Hello") and len(out.strip()) > len("Hello")
    assert "tokens/s" in err and "GB/s" in err and "phase 4 continuous batching" in err


def test_generate_with_a_per_phase_impl_and_sampling(capsys):
    code, _, err = cli(capsys, "generate", "--model", "random:tiny", "--prompt", "Hi", "--max-new-tokens", "6",
                       "--impl", "framework", "--chat", "--temperature", "0.8", "--top-k", "20", "--seed", "1")
    assert code == 0 and "no KV cache" in err
    code, _, err = cli(capsys, "generate", "--model", "random:tiny", "--max-new-tokens", "6",
                       "--impl", "phase3=reference,phase1=reference")
    assert code == 0 and "phase 4 continuous batching" in err and "phase1=reference" in err


@pytest.mark.parametrize("args,needle", [
    (["--model", "/definitely/not/here"], "does not exist"),
    (["--model", "random:huge"], "unknown random model"),
    (["--model", "random:tiny", "--impl", "phase9=framework"], "unknown phase 'phase9'"),
    (["--model", "random:tiny", "--impl", "phase3=fastest"], "unknown implementation 'fastest' for phase3"),
    (["--model", "random:tiny", "--impl", "phase3=no_such.module"], "does not import"),
    (["--model", "random:tiny", "--impl", "turbo"], "neither phaseN=NAME nor a preset"),
    (["--model", "random:tiny", "--prompt", "x" * 1100], "exceeds the context of 1024 tokens"),
    (["--model", "random:tiny", "--quant", "int3"], "unknown implementation 'int3' for phase5"),
    (["--model", "random:tiny", "--tp", "3"], "does not divide"),
    (["--model", "random:tiny", "--temperature", "-1"], "temperature must be ≥ 0"),
    pytest.param(["--model", "random:tiny", "--rope", "cuda"], "CUDA kernel",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU --rope cuda is valid")),
])
def test_bad_input_is_one_line_exit_2(capsys, monkeypatch, args, needle):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = cli(capsys, "generate", *args)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and needle in errors[0], err
    assert "Traceback" not in err


def test_chat_over_stdin_in_a_real_process():
    """Two turns from a pipe, then end of input: two replies, exit 0, nothing on stderr but the log."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "shared.cli", "chat", "--max-new-tokens", "12"],
                          input="Who made the heaven?\nAnd the earth?\n", capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    replies = [line for line in done.stdout.splitlines() if line.strip()]
    assert 1 <= len(replies) <= 2 * 12 and done.stdout.count("\n") >= 2
    assert "Traceback" not in done.stderr


def test_chat_ctrl_c_during_a_reply_exits_cleanly():
    import signal

    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "chat", "--max-new-tokens", "400"], cwd=REPO, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.stdin.write("Tell me a long story\n")
        proc.stdin.flush()
        assert proc.stdout.read(1)  # the reply has started streaming
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err, err


class Turns(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_chat_history_template_reset_and_over_long_turn():
    from shared.chat import run_chat
    from shared.engine import EngineConfig, LLMEngine

    engine = LLMEngine(EngineConfig(model="random:tiny", max_model_len=160))
    seen: list[list[int]] = []
    stream = engine.stream
    engine.stream = lambda ids, *a, **k: (seen.append(list(ids)), stream(ids, *a, **k))[1]
    stdin = Turns("first question\n" + "y" * 300 + "\nsecond question\n/reset\nthird\n/exit\nnever read\n")
    out, err = io.StringIO(), io.StringIO()
    assert run_chat(engine, None, max_tokens=8, stdin=stdin, stdout=out, stderr=err) == 0
    assert len(seen) == 3  # the over-long turn was refused, /exit stopped before the last line
    assert "exceeds the context" in err.getvalue() and err.getvalue().count("error:") == 1
    tok = engine.tokenizer
    first = tok.encode_chat([{"role": "user", "content": "first question"}])
    assert seen[0] == first  # the chat template, with the generation prompt
    assert seen[1][: len(first)] == first and len(seen[1]) > len(first)  # the history came along
    assert seen[2] == tok.encode_chat([{"role": "user", "content": "third"}])  # /reset dropped it
    assert out.getvalue().count("\n") == 3


def test_chat_drops_the_oldest_exchanges_when_the_context_is_full():
    from shared.chat import fit_history
    from shared.engine import EngineConfig, LLMEngine

    engine = LLMEngine(EngineConfig(model="random:tiny", max_model_len=120))
    history = []
    for i in range(6):
        history += [{"role": "user", "content": f"question {i} " * 3}, {"role": "assistant", "content": "answer " * 3}]
    history.append({"role": "user", "content": "last"})
    ids = fit_history(engine, "be brief", history, max_tokens=16)
    text = engine.tokenizer.decode(ids)
    assert len(ids) + 16 <= 120 and len(history) < 13 and history[-1]["content"] == "last"
    assert text.index("be brief") < text.index("last")  # the system message stays, first
    assert "question 0" not in text and history[0]["role"] == "user"  # whole exchanges dropped, oldest first


@pytest.mark.parametrize("quant", [None, "rtn"], ids=["bf16", "int4-rtn"])
def test_serve_answers_like_the_engine(quant):
    """The server (phase 4's continuous batching, with phase 5's INT4 projections under ``quant``) returns the
    greedy text of the prototype's path on the same weights: phase 0's engine (phase 5's ``Int4Engine`` with INT4),
    a static KV cache and no scheduler (``phase4=off``)."""
    import openai

    from phase4_scheduler.serve import ServerThread
    from shared.engine import EngineConfig, LLMEngine
    from shared.serve import build_app

    engine = LLMEngine(EngineConfig(model="kjv-llama-18m", impl="phase1=reference", quant=quant, max_num_seqs=4,
                                    max_num_batched_tokens=64))
    prototype_path = LLMEngine(replace(engine.config, impl="phase4=off"), model=engine.model)
    prompts = ["And God said", "In the beginning God created"]
    expected = [prototype_path.generate(p, max_tokens=10, ignore_eos=True)[0].text for p in prompts]
    assert prototype_path.last_run.path.startswith("phase 5 INT4" if quant else "phase 0")
    app, _ = build_app(engine.config, engine=engine)
    with ServerThread(app) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        for prompt, want in zip(prompts, expected, strict=True):
            answer = client.completions.create(model="kjv-llama-18m", prompt=prompt, max_tokens=10, temperature=0,
                                               extra_body={"ignore_eos": True})
            assert answer.choices[0].text == want


def test_report_runs_each_phase_check_with_progress(capsys, tmp_path):
    code, _, err = cli(capsys, "report", "--phases", "module0", "--size", "small", "--out", str(tmp_path))
    assert code == 0, err
    assert "[report 1/1] module0_profiling" in err and "| module0_profiling |" in err
    assert list((tmp_path / "module0_profiling").glob("*.small.md"))
    code, _, err = cli(capsys, "report", "--phases", "phase9")
    assert code == 2 and err.count("error:") == 1


def test_bench_command(capsys):
    code, out, _ = cli(capsys, "bench", "--model", "random:tiny", "--num-requests", "4", "--short-tokens", "3",
                       "--long-tokens", "6", "--prompt-tokens", "16", "--new-tokens", "6")
    assert code == 0 and "offline throughput" in out and "bs=1 decode" in out and "KV utilisation" in out
