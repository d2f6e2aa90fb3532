"""The evaluation utility against direct float64 computations on a tiny random HF Llama (CPU, seconds)."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from p0_helpers import make_hf_model

from phase0_prototype.errors import ModelError
from phase0_prototype.evaluate import evaluate_ids, main, unigram_perplexity

torch.set_num_threads(1)
BOS = 1


@pytest.fixture(scope="module")
def hf():
    return make_hf_model(seed=3)


@pytest.fixture(scope="module")
def hf64(hf):
    return make_hf_model(seed=3).double()


def random_ids(n: int, seed: int, vocab: int) -> torch.Tensor:
    return torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def reference_full(hf64, ids: torch.Tensor, bos: int | None) -> tuple[float, int, int]:
    """(nll sum, correct, scored) of one float64 forward over the whole text."""
    inputs = torch.cat([torch.tensor([bos]), ids]) if bos is not None else ids
    with torch.no_grad():
        logits = hf64(inputs[None]).logits[0]
    logp = torch.log_softmax(logits[:-1], -1)
    target = inputs[1:]
    nll = -float(logp.gather(1, target[:, None]).sum())
    return nll, int((logits[:-1].argmax(-1) == target).sum()), target.numel()


@pytest.mark.parametrize("bos", [None, BOS])
def test_window_covering_text_equals_full_context(hf, hf64, bos):
    ids = random_ids(90, seed=11, vocab=hf.config.vocab_size)
    result = evaluate_ids(lambda x: hf(x).logits, ids, window=128, stride=40, bos_id=bos)
    nll, correct, scored = reference_full(hf64, ids, bos)
    assert result.windows == 1
    assert result.scored_tokens == scored == (90 if bos is not None else 89)
    assert result.nll_sum == pytest.approx(nll, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nll / scored), rel=1e-5)
    assert result.correct == correct and result.accuracy == correct / scored


@pytest.mark.parametrize("bos,window,stride", [(None, 16, 5), (None, 16, 15), (BOS, 16, 15), (BOS, 12, 4)])
def test_sliding_window_equals_per_token_contexts(hf, hf64, bos, window, stride):
    """Each target scored once, with exactly the context its window gives it (one float64 forward per
    token)."""
    ids = random_ids(41, seed=5 + window + stride, vocab=hf.config.vocab_size)
    result = evaluate_ids(lambda x: hf(x).logits, ids, window=window, stride=stride, bos_id=bos)
    span = window - (bos is not None)
    nll, correct, scored = 0.0, 0, 0
    for p in range(0 if bos is not None else 1, ids.numel()):
        k = 0
        while min(k * stride + span, ids.numel()) <= p:  # the first window whose end passes p
            k += 1
        context = ids[k * stride:p]
        inputs = torch.cat([torch.tensor([bos]), context]) if bos is not None else context
        with torch.no_grad():
            logits = hf64(inputs[None]).logits[0, -1]
        nll -= float(torch.log_softmax(logits, -1)[ids[p]])
        correct += int(logits.argmax() == ids[p])
        scored += 1
    assert result.scored_tokens == scored
    assert result.nll_sum == pytest.approx(nll, rel=1e-5)
    assert result.correct == correct
    full_nll, _, _ = reference_full(hf64, ids, bos)
    assert abs(result.nll_sum - full_nll) > 1e-3  # shorter contexts really were used


@pytest.mark.parametrize("window,stride", [(8, 0), (8, 8), (1, 1), (8, 9)])
def test_windows_that_skip_tokens_are_refused(hf, window, stride):
    with pytest.raises(ModelError, match="unscored"):
        evaluate_ids(lambda x: hf(x).logits, random_ids(30, 0, 300), window=window, stride=stride or -1)


def test_unigram_perplexity_matches_hand_computation():
    train, held = [5, 5, 5, 7], [5, 7, 9]
    vocab = 10  # add-one: counts 5→4, 7→2, 9→1 over a total of 4 + 10
    expected = math.exp(-(math.log(4 / 14) + math.log(2 / 14) + math.log(1 / 14)) / 3)
    assert unigram_perplexity(train, held, vocab) == pytest.approx(expected, rel=1e-12)
    assert unigram_perplexity([], held, vocab) == pytest.approx(vocab)  # no data: uniform


def cli_perplexity(capsys, argv) -> float:
    assert main(argv) == 0
    out = capsys.readouterr().out
    return float(out.split("perplexity ")[1].split(",")[0])


def test_cli_hf_and_phase0_engine_agree_on_a_text_file(tmp_path, capsys):
    text = tmp_path / "eval.txt"
    text.write_text("In the beginning was the Word, and the Word was with God. " * 6)
    args = ["--model", "random:tiny", "--text", str(text), "--window", "64", "--stride", "32"]
    ppl_hf = cli_perplexity(capsys, args + ["--engine", "hf"])
    ppl_fw = cli_perplexity(capsys, args + ["--engine", "framework"])
    assert ppl_hf == pytest.approx(ppl_fw, rel=1e-3)
    assert main(args + ["--unigram-from", str(text)]) == 0
    assert "unigram baseline" in capsys.readouterr().out


def test_missing_file_is_one_clear_line(tmp_path, capsys):
    assert main(["--model", "random:tiny", "--text", str(tmp_path / "nope.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: evaluation text") and "does not exist" in err and err.count("\n") == 1


def test_wikitext2_without_datasets_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    assert main(["--model", "random:tiny", "--wikitext2"]) == 2
    assert "pip install datasets" in capsys.readouterr().err


def test_wikitext2_path_on_a_local_file(tmp_path, capsys):
    """The --wikitext2 code path (datasets loader, rows joined by blank lines) on a local copy."""
    pytest.importorskip("datasets", reason="the `datasets` package is not installed (pip install datasets)")
    rows = [" = Valkyria Chronicles = \n", "", " The game began development in 2010 . \n",
            " It was released . \n"]
    local = tmp_path / "wiki.test.txt"
    local.write_text("\n".join(r.rstrip("\n") for r in rows) + "\n")
    joined = tmp_path / "joined.txt"
    from datasets import load_dataset

    joined.write_text("\n\n".join(load_dataset("text", data_files=str(local), split="train")["text"]))
    common = ["--model", "random:tiny", "--window", "48", "--stride", "24"]
    ppl_wiki = cli_perplexity(capsys, common + ["--wikitext2", "--wikitext2-file", str(local)])
    ppl_text = cli_perplexity(capsys, common + ["--text", str(joined)])
    assert ppl_wiki == pytest.approx(ppl_text, rel=1e-9)
