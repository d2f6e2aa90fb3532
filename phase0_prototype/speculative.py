"""Speculative decoding at batch 1 with prompt-lookup drafts: several greedy tokens per forward when the
text repeats itself (Leviathan et al. 2023; Saxena's prompt lookup decoding).

A batch-1 step costs its weight reads (or its launches), whatever it computes for one position, so a
forward over ``k + 1`` positions costs about one step. The drafter guesses the next ``k`` tokens from the
sequence itself: the latest earlier occurrence of its last n-gram (n = 3, 2, 1) and what followed. One
verify forward runs ``[last token, k drafts]`` over the engine's static KV cache; the longest prefix of
drafts equal to the greedy argmax is accepted, plus the model's own next token, so the output is the plain
greedy output, token for token (up to float ties: the verify's matmuls run on more rows). Rejected drafts
leave K/V in slots past the accepted ones; the mask hides them until later tokens overwrite them.

When drafts keep failing, a verify costs more than the step it replaces: a running estimate of accepted
drafts per verify, kept up to date on plain tokens too by drafting "in the shadow", switches between
verifying and plain bursts of ``SolutionEngine``'s graph at a break-even measured on this machine.
Limits: greedy only (sampling runs the engine's plain ``generate``), batch 1, the verify step is the
PyTorch step (torch.compile + CUDA graph on a GPU; the Triton kernels take one query per sequence).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from phase0_prototype.errors import ModelError
from phase0_prototype.generation import (
    EosState,
    GenerationOutput,
    TokenCallback,
    as_batch,
    check_context,
    finish,
)
from phase0_prototype.sampling import GREEDY, SamplingParams
from phase0_prototype.solution import SolutionEngine


class PromptLookup:
    """Drafts from the sequence's own history: n-gram -> the index after its latest occurrence that has a
    follower, updated in O(n) per token, so a proposal is a few dictionary lookups."""

    def __init__(self, k: int, max_n: int = 3, min_n: int = 1):
        self.k, self.ns = k, range(max_n, min_n - 1, -1)
        self.tokens: list[int] = []
        self.follow: dict[tuple[int, ...], int] = {}

    def reset(self, tokens: list[int]) -> None:
        self.tokens, self.follow = [], {}
        for t in tokens:
            self.append(t)

    def append(self, token: int) -> None:
        end = len(self.tokens)  # the n-grams ending just before `token` now have it as their follower
        for n in self.ns:
            if end >= n:
                self.follow[tuple(self.tokens[end - n:end])] = end
        self.tokens.append(token)

    def propose(self) -> list[int]:
        """Up to ``k`` tokens that followed the latest earlier occurrence of the longest matching suffix
        n-gram ([] when none matches); a copy reaching the end continues into the draft (a loop repeats)."""
        for n in self.ns:
            start = self.follow.get(tuple(self.tokens[-n:])) if len(self.tokens) >= n else None
            if start is not None:
                draft: list[int] = []
                for i in range(start, start + self.k):
                    draft.append(self.tokens[i] if i < len(self.tokens) else draft[i - len(self.tokens)])
                return draft
        return []


def chunk_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    positions: torch.Tensor) -> torch.Tensor:
    """Queries of one sequence at ``positions [C]`` over its cache: q ``[1, C, Hq, D]``, caches
    ``[Hkv, S, D]`` (the chunk's K/V already written) -> ``[1, C, Hq·D]``; query j sees slots ≤ positions[j].
    Static shapes, as ``solution.decode_attention``: every slot is scored and the later ones masked."""
    _, C, Hq, D = q.shape
    Hkv, S = k_cache.shape[0], k_cache.shape[1]
    G = Hq // Hkv
    qg = q[0].view(C, Hkv, G, D).transpose(0, 1).reshape(Hkv, C * G, D)  # rows ordered (query, group head)
    scores = torch.matmul(qg, k_cache.transpose(-1, -2)).float() * (D ** -0.5)  # [Hkv, C·G, S]
    visible = torch.arange(S, device=q.device)[None, :] <= positions[:, None]  # [C, S]
    scores = scores.masked_fill(~visible.repeat_interleave(G, 0)[None], float("-inf"))
    out = torch.matmul(scores.softmax(-1).to(v_cache.dtype), v_cache)  # [Hkv, C·G, D]
    return out.view(Hkv, C, G, D).transpose(0, 1).reshape(1, C, Hq * D)


def verify_step(engine: SolutionEngine, tokens: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """``tokens [C]`` at positions ``start[0] ..`` through the engine's layers, their K/V written into cache
    row 0 -> greedy next tokens ``[C]``. No host reads: it compiles with ``fullgraph`` and captures."""
    positions = start + torch.arange(tokens.shape[0], device=tokens.device)
    cache = engine.kv_cache

    def attend(i, q, k, v):
        cache[i, 0, 0, :, positions] = k[0].transpose(0, 1)  # [Hkv, C, D] into the chunk's slots
        cache[i, 1, 0, :, positions] = v[0].transpose(0, 1)
        return chunk_attention(q, cache[i, 0, 0], cache[i, 1, 0], positions)

    x = engine.weights.embed_tokens[tokens][None]
    for i in range(engine.config.num_hidden_layers):
        x = engine._layer(i, x, positions[None], attend)
    return engine._logits(x[0]).argmax(-1)


@dataclass
class SpeculationStats:
    verifies: int = 0
    drafted: int = 0  # draft tokens sent to verifies (k per verify)
    accepted: int = 0
    plain_tokens: int = 0  # tokens from plain steps (no draft, or switched off)
    switched_off: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


class SpeculativeDecoder:
    """Greedy ``generate`` of a batch-1 ``SolutionEngine`` with ``k`` prompt-lookup drafts per verify.

    On a GPU with ``compile=True`` the verify forward is one CUDA graph (fixed ``k``: static shapes) and
    plain tokens are bursts of the engine's own decode graph; otherwise both run eagerly.
    """

    MARGIN = 0.25  # accepted drafts per verify above the break-even before verifying pays (host work)
    ALPHA = 0.3  # weight of the newest attempt in the running estimate
    NO_DRAFT_BURST, OFF_BURST = 4, 16  # plain tokens between host reads: no draft; switched off

    def __init__(self, engine: SolutionEngine, k: int = 4):
        if k < 1:
            raise ModelError(f"k = {k} drafts per verify: give k ≥ 1")
        self.engine, self.k = engine, k
        self.drafter = PromptLookup(k)
        self.use_graphs = engine.use_graphs
        self.break_even: float | None = None  # accepted drafts per verify where verifying starts to pay
        self.stats = SpeculationStats()
        self._graph: torch.cuda.CUDAGraph | None = None
        dev = engine.device
        self._tokens_in = torch.zeros(k + 1, dtype=torch.long, device=dev)
        self._start_in = torch.zeros(1, dtype=torch.long, device=dev)
        self._greedy = torch.zeros(k + 1, dtype=torch.long, device=dev)
        self._no_eos = EosState(1, (), dev)  # plain bursts: EOS is found on the host

    # ------------------------------------------------------------------ the two kinds of forward
    def _capture(self) -> None:
        """The verify step, compiled and captured like the engine's PyTorch decode graph."""
        from module0_profiling.timing import capture_cuda_graph
        from phase0_prototype.solution import _clear_cublas_workspaces

        e = self.engine
        step = torch.compile(lambda t, s: verify_step(e, t, s), fullgraph=e._fullgraph, dynamic=False)

        def body() -> None:
            self._greedy.copy_(step(self._tokens_in, self._start_in))

        saved = e.kv_cache.clone()  # warm-up and capture write slots [0, k]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                body()
        torch.cuda.current_stream().wait_stream(side)
        _clear_cublas_workspaces()  # the capture gets its own cuBLAS workspace (see SolutionEngine)
        self._graph = capture_cuda_graph(body, warmup=0)
        _clear_cublas_workspaces()
        e.kv_cache.copy_(saved)

    def _verify(self, last: int, draft: list[int], position: int) -> list[int]:
        """Greedy tokens after ``last`` (at ``position``) and after each draft token."""
        self._tokens_in.copy_(torch.tensor([last] + draft))
        self._start_in.fill_(position)
        if self.use_graphs:
            if self._graph is None:
                self._capture()
            self._graph.replay()
        else:
            self._greedy.copy_(verify_step(self.engine, self._tokens_in, self._start_in))
        return self._greedy.tolist()

    def _plain(self, last: int, position: int, n: int) -> list[int]:
        """``n`` plain greedy tokens after ``last`` at ``position``, read back once."""
        e = self.engine
        if self.use_graphs:
            g = e._graph_for(1)  # its greedy tail feeds each token back and records it in `history`
            g.start(torch.tensor([last]), position, (), self._no_eos)
            for _ in range(n):
                g.graph.replay()
            return g.history[0, position + 1:position + 1 + n].tolist()
        step, out = e._step_for(1), []
        token = torch.tensor([last], device=e.device)
        for i in range(n):
            token = step(token, torch.tensor([position + i], device=e.device)).argmax(-1)
            out.append(int(token))
        return out

    def _calibrate(self) -> None:
        """Break-even = (verify time / plain time per token) − 1 accepted drafts per verify, + ``MARGIN``,
        timed here through the same calls ``generate`` makes (host work included); the writes land in
        slots a later prefill and steps overwrite."""
        from module0_profiling.timing import time_region

        verify = time_region(lambda: self._verify(0, [0] * self.k, 0), repeats=3).median
        plain = time_region(lambda: self._plain(0, 0, self.OFF_BURST), repeats=3).median / self.OFF_BURST
        self.break_even = max(verify / plain - 1.0, 0.0) + self.MARGIN

    @torch.inference_mode()
    def warmup(self) -> None:
        """Capture both graphs and measure the break-even ahead of the first ``generate``."""
        if self.use_graphs:
            self.engine.warmup()
        self._calibrate()

    # ------------------------------------------------------------------ generate
    @torch.inference_mode()
    def generate(self, prompt_ids, max_new_tokens: int, sampling: SamplingParams = GREEDY, *,
                 on_tokens: TokenCallback | None = None, stop_on_eos: bool = True,
                 eos_ids: tuple[int, ...] | None = None) -> GenerationOutput:
        e = self.engine
        if not sampling.greedy:  # a sampled token is not the argmax a draft can be checked against
            return e.generate(prompt_ids, max_new_tokens, sampling, on_tokens=on_tokens,
                              stop_on_eos=stop_on_eos, eos_ids=eos_ids)
        tokens = as_batch(prompt_ids, e.device)
        if tokens.shape[0] != 1:
            raise ModelError(f"speculative decoding runs one sequence, got a batch of {tokens.shape[0]}: "
                             "call generate once per prompt")
        T = tokens.shape[1]
        check_context(T, max_new_tokens, e.max_seq_len, "this engine's KV cache")
        eos_ids = e.model.tokenizer.eos_ids if eos_ids is None else eos_ids
        stops = set(eos_ids) if stop_on_eos else set()
        if self.break_even is None:
            self._calibrate()
        self.stats = SpeculationStats()
        estimate, speculating = self.break_even + 2 * self.MARGIN, True  # start by trying
        out = [int(e.prefill(tokens).argmax(-1))]
        self.drafter.reset(tokens[0].tolist() + out)
        position = T  # the cache holds [0, T); out[-1] is the next step's input, at `position`
        done = out[0] in stops or (on_tokens is not None and on_tokens(torch.tensor([out])))
        while not done and len(out) < max_new_tokens:
            room = max_new_tokens - len(out)
            draft = self.drafter.propose() if speculating and position + self.k < e.max_seq_len else []
            if draft and room > 1:
                new = self._verify(out[-1], draft, position)
                accepted = 0
                while accepted < self.k and draft[accepted] == new[accepted]:
                    accepted += 1
                new = new[:accepted + 1]  # the accepted drafts (they equal the greedy tokens), then one more
                self.stats.verifies += 1
                self.stats.drafted += self.k
                self.stats.accepted += accepted
                estimate += self.ALPHA * (accepted - estimate)
                for t in new:
                    self.drafter.append(t)
            else:
                new = self._plain(out[-1], position, min(room, self.NO_DRAFT_BURST if speculating
                                                         else self.OFF_BURST))
                self.stats.plain_tokens += len(new)
                for i, t in enumerate(new):  # shadow drafting: what a verify would have accepted here
                    shadow = self.drafter.propose()
                    if shadow:
                        ahead = new[i:]
                        hits = 0
                        while hits < min(len(ahead), self.k) and shadow[hits] == ahead[hits]:
                            hits += 1
                        estimate += self.ALPHA * (hits - estimate)
                    self.drafter.append(t)
            if speculating and estimate < self.break_even:
                self.stats.switched_off += 1
            speculating = estimate >= self.break_even
            position += len(new)
            new = new[:room]
            for j, t in enumerate(new):
                if t in stops:
                    new = new[:j + 1]
                    done = True
                    break
            out += new
            if on_tokens is not None and on_tokens(torch.tensor([new])):
                done = True
        return finish(torch.tensor([out]), eos_ids, stop_on_eos)
