"""The generate CLI: streams text, prints speed, and turns user mistakes into one line + exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from phase0_prototype.generate import main

REPO = Path(__file__).resolve().parents[2]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["generate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_random_tiny_prints_text_and_speed(capsys):
    code, out, err = run_cli(capsys, "--model", "random:tiny", "--prompt", "Hello", "--max-new-tokens", "12")
    assert code == 0
    assert out.strip()
    assert "tokens/s" in err and "GB/s" in err


def test_chat_and_sampling_flags(capsys):
    code, _, err = run_cli(capsys, "--model", "random:tiny", "--prompt", "Hi", "--max-new-tokens", "5",
                           "--chat", "--temperature", "0.8", "--top-k", "20", "--top-p", "0.9", "--seed", "1",
                           "--impl", "framework")
    assert code == 0 and "no KV cache" in err


def not_llama_dir(tmp_path: Path) -> str:
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


@pytest.mark.parametrize("model,prompt,needle", [
    ("/definitely/not/here", "hi", "does not exist"),
    ("no-such-org/no-such-model-xyz", "hi", "pass a local directory or random:tinyllama"),
    ("random:huge", "hi", "unknown random model"),
    (None, "hi", "not LlamaForCausalLM"),
    ("random:tiny", "x" * 1100, "exceeds"),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, monkeypatch, model, prompt, needle):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an unknown hub id must fail fast, network or not
    code, _, err = run_cli(capsys, "--model", model or not_llama_dir(tmp_path), "--prompt", prompt)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err


def test_real_process_exit_code_and_no_traceback():
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "phase0_prototype", "generate", "--model", "./missing-model",
                           "--prompt", "hi"], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
