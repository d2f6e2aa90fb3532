"""Penalties, logit bias and ``min_tokens`` (``logits_processing``) against a float64 restatement of vLLM's rules,
on fresh random logits and histories; and through the engine, where a sampled token joins the history."""

import random

import torch

from phase4_scheduler.logits_processing import LogitsProcessing, RowState


def _reference(logits, prompt, output, p: LogitsProcessing, eos):
    """The rules written out over Python lists, in float64."""
    x = [float(v) for v in logits]
    seen = set(prompt) | set(output)
    for t in seen:
        x[t] = x[t] / p.repetition_penalty if x[t] > 0 else x[t] * p.repetition_penalty
    for t in set(output):
        x[t] -= p.frequency_penalty * output.count(t) + p.presence_penalty
    for t, b in p.logit_bias:
        x[t] += b
    if len(output) < p.min_tokens:
        for t in eos:
            x[t] = float("-inf")
    return torch.tensor(x, dtype=torch.float64)


def test_row_state_matches_the_rules_on_random_histories():
    rng = random.Random()
    for _ in range(20):
        vocab = rng.randrange(8, 64)
        prompt = [rng.randrange(vocab) for _ in range(rng.randrange(0, 10))]
        output = [rng.randrange(vocab) for _ in range(rng.randrange(0, 12))]
        eos = (rng.randrange(vocab),)
        bias = tuple((t, rng.uniform(-100, 100)) for t in rng.sample(range(vocab), rng.randrange(0, 4)))
        p = LogitsProcessing(rng.uniform(-2, 2), rng.uniform(-2, 2), rng.uniform(0.5, 2.0), bias,
                             rng.randrange(0, 15))
        state = RowState(p, prompt, eos, vocab, torch.device("cpu"))
        for t in output:
            state.record(torch.tensor([t]))
        logits = torch.randn(1, vocab) * 3
        got = state.apply(logits)[0].double()
        want = _reference(logits[0].tolist(), prompt, output, p, eos)
        assert torch.equal(torch.isinf(got), torch.isinf(want))
        finite = ~torch.isinf(want)
        assert torch.allclose(got[finite], want[finite], rtol=1e-5, atol=1e-4)


def test_neutral_processing_is_inactive():
    assert not LogitsProcessing().active and LogitsProcessing(min_tokens=1).active


def test_each_greedy_token_is_the_argmax_of_its_processed_row():
    """Through the engine (greedy, strong penalties): every output token equals the argmax of phase 0's
    no-cache logits for the sequence so far, processed by the rules with the history of the tokens before it —
    so the engine both applies the rules and records each sampled token."""
    from phase0_prototype import load_impl as phase0_impl
    from phase0_prototype import load_model
    from phase4_scheduler import SchedulerConfig
    from phase4_scheduler.engine import BatchingConfig, BatchingEngine

    model = load_model("random:tiny", dtype="fp32", device="cpu", seed=random.randrange(1000))
    engine = BatchingEngine(model, BatchingConfig(SchedulerConfig(max_num_seqs=2, max_num_batched_tokens=64)))
    vocab = model.config.vocab_size
    prompt = [random.randrange(3, vocab) for _ in range(6)]
    strong = LogitsProcessing(frequency_penalty=2.0, presence_penalty=1.0, repetition_penalty=3.0,
                              logit_bias=((random.randrange(vocab), 5.0),))
    r = engine.make_request(prompt, 10, ignore_eos=True, processing=strong)
    engine.generate([r])
    reference = phase0_impl("framework").build(model)
    state, ids = RowState(strong, prompt, (), vocab, torch.device("cpu")), list(prompt)
    for t in r.output_ids:
        logits = reference.forward_logits(torch.tensor([ids]))[0, -1]
        processed = state.apply(logits[None])[0]
        top2 = processed.topk(2).values
        if top2[0] - top2[1] > 1e-4:  # a near-tie may go either way between two float paths
            assert int(processed.argmax()) == t
        state.record(torch.tensor([t]))
        ids.append(t)
    assert len(r.output_ids) == 10
