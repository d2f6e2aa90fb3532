"""The launcher: ``python -m phase6_tensor_parallel generate --tp N`` end to end, and its one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from phase0_prototype import load_model
from phase6_tensor_parallel import solution

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "phase6_tensor_parallel", "generate", *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


def test_generate_tp2_prints_tp1_text():
    out = _run("--model", "random:tiny", "--tp", "2", "--prompt", "tensor", "--max-new-tokens", "6")
    assert out.returncode == 0, out.stderr[-500:]
    assert "[tp=2 solution" in out.stderr
    model = load_model("random:tiny", dtype="fp32")
    ids = solution.build(model).generate(torch.tensor([model.tokenizer.encode("tensor")]), 6)[0].tolist()
    assert out.stdout == model.tokenizer.decode(ids) + "\n"


def test_tp_size_that_does_not_divide_kv_heads_is_one_line():
    out = _run("--model", "random:tiny", "--tp", "4")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: --tp 4 does not divide num_key_value_heads=2: the solution shards whole KV heads; use --tp in [1, 2]"]
