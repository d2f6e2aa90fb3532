"""vLLM's spellings of the common flags reach the same engine settings as ours; defaults batch by device and
show in ``--help``; ``--version``; ``--served-model-name`` is the name clients see."""

from __future__ import annotations

import openai
import pytest

from phase4_scheduler.plan import SERVING_DEFAULTS
from shared.cli import build_parser, engine_config, main


def config_of(*argv: str):
    return engine_config(build_parser().parse_args(["serve", "--device", "cpu", *argv]))


def test_vllm_spellings_equal_ours():
    ours = config_of("--max-seq-len", "256", "--tp", "2", "--dtype", "bf16")
    vllm = config_of("--max-model-len", "256", "--tensor-parallel-size", "2", "--dtype", "bfloat16")
    short = config_of("--max-model-len", "256", "-tp", "2", "--dtype", "bfloat16")
    assert ours == vllm == short
    assert (ours.max_model_len, ours.tp, ours.dtype) == (256, 2, "bf16")
    assert config_of("--dtype", "float32").dtype == "fp32" and config_of("--dtype", "auto").dtype is None


def test_batching_defaults_follow_the_device_and_flags_win():
    c = config_of()
    assert (c.max_num_seqs, c.max_num_batched_tokens) == SERVING_DEFAULTS["cpu"]
    c = config_of("--max-num-seqs", "7", "--max-num-batched-tokens", "99")
    assert (c.max_num_seqs, c.max_num_batched_tokens) == (7, 99)
    gpu = engine_config(build_parser().parse_args(["serve", "--device", "cuda"]))
    assert (gpu.max_num_seqs, gpu.max_num_batched_tokens) == SERVING_DEFAULTS["cuda"]


def test_prefix_caching_flag_is_vllms_and_off_by_default():
    assert config_of().enable_prefix_caching is False
    assert config_of("--enable-prefix-caching").enable_prefix_caching is True
    assert config_of("--enable-prefix-caching", "--no-enable-prefix-caching").enable_prefix_caching is False


def test_prefix_caching_without_the_scheduler_is_one_line(capsys):
    assert main(["serve", "--device", "cpu", "--port", "0", "--enable-prefix-caching", "--impl", "phase4=off"]) != 0
    assert "error: --enable-prefix-caching needs phase 4's scheduler: drop phase4=off" in capsys.readouterr().err


def test_help_shows_defaults_and_version_prints(capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--max-model-len" in out and "(default: 8000)" in out and "(default: warning)" in out
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("titaninfer ")


def test_unknown_dtype_is_refused_naming_the_choices(capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--dtype", "int3"])
    assert e.value.code == 2 and "bfloat16" in capsys.readouterr().err


def test_served_model_name_is_what_clients_see():
    from phase4_scheduler.serve import ServerThread
    from shared.serve import build_app

    app, _ = build_app(config_of("--model", "kjv-llama-18m", "--no-compile"), served_model_name="my-llama")
    with ServerThread(app) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == ["my-llama"]
        r = client.completions.create(model="my-llama", prompt="In the beginning", max_tokens=3, temperature=0)
        assert r.model == "my-llama" and r.usage.completion_tokens <= 3
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="kjv-llama-18m", prompt="x", max_tokens=1)


def test_chat_template_flag_replaces_the_models_template(tmp_path):
    """``--chat-template FILE`` (vLLM's flag): the engine's chats render with it — compared with jinja2 itself."""
    import random

    import jinja2

    from shared.engine import LLMEngine

    tag = f"turn{random.randrange(10**6)}"
    template = "{% for m in messages %}<" + tag + ">{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    (tmp_path / "t.jinja").write_text(template)
    engine = LLMEngine(config_of("--chat-template", str(tmp_path / "t.jinja")))
    messages = [{"role": "user", "content": f"hello {tag}"}]
    want = jinja2.Template(template).render(messages=messages)
    assert engine.tokenizer.apply_chat_template(messages) == want
    assert engine.encode(messages, chat=True) == engine.tokenizer.encode(want, add_special_tokens=False)


@pytest.mark.parametrize("value, words", [("no/such/file.jinja", "no such file"), ("{% for %}", "chat template")])
def test_a_bad_chat_template_is_one_line_at_start(capsys, value, words):
    assert main(["generate", "--device", "cpu", "--chat-template", value, "--max-new-tokens", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --chat-template") and words in err and "\n" not in err


def test_python_m_titaninfer_is_the_command():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "titaninfer", "--version"], cwd=root, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("titaninfer ")
    from shared.engine import EngineConfig as Config
    from shared.engine import LLMEngine as Engine
    from titaninfer import EngineConfig, LLMEngine
    assert (LLMEngine, EngineConfig) == (Engine, Config)
