"""``LLMEngine``: the phases' solutions composed into one engine, each phase's part selectable.

What runs where (``impls``: see ``shared.impls``; ``EngineConfig.impl`` is the ``--impl`` spec):

- **one request** (``generate`` of a single prompt, ``stream``, the CLI's ``generate`` and ``chat``):
  phase 0's engine (``shared.single``) — static KV cache and, on CUDA, the decode step as Triton kernels
  replayed as one CUDA graph — with phase 2's RoPE when ``phase2`` is not ``off`` and phase 5's INT4
  projections when ``quant`` is set. ``bs1_decode="phase4"`` sends lone requests through phase 4 instead.
- **several requests**: phase 4's continuous batching (``shared.batched``: scheduler ``phase4``, phase 1's
  block manager, phase 3's paged attention, sampling per request), over the float weights or phase 5's
  INT4 projections (the same ``QuantLinear`` objects as the single path). ``phase4=off`` serves them one
  at a time through the single-request engine (the seed's prototype).
- **tp > 1**: every request through phase 4's engine on rank 0, each step's forward pass run by all ranks
  on their shards (``shared.tp_workers``: workers started once, ended by ``close``).

Why phase 0's engine for bs=1 by default: a lone decode step is a GEMV per projection, memory-bound, and
phase 0 runs it as six fused Triton kernels per layer in one graph, where phase 4's bucket graph runs
cuBLAS GEMMs and separate norm/RoPE/cache-write kernels at M=1. ``make check-engine`` times both in one
run (its "bs=1 decode path" table, ``reports/shared/``): the choice stays explicit, and is checked. The two
engines are built on first use and share one copy of the weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import torch

from phase0_prototype.errors import ModelError
from phase0_prototype.sampling import GREEDY, SamplingParams
from phase0_prototype.sources import LoadedModel, load_model
from shared import impls as impl_spec
from shared.quant import is_int4_checkpoint, load_int4_checkpoint
from shared.single import single_deltas, single_output, static_kv_utilisation

DEFAULT_MODEL = "kjv-llama-18m"  # the bundled model: offline, CPU-friendly
BS1_DECODE_PATHS = ("phase0", "phase4")


@dataclass(frozen=True)
class EngineConfig:
    model: str = DEFAULT_MODEL  # hub id, HF directory, bundled name, random:tinyllama, random:tiny
    impl: str | Sequence[str] | Mapping[str, str] = "solution"  # --impl spec (shared.impls)
    device: str | None = None  # default: cuda when available
    dtype: str | None = None  # default: bf16 on cuda, fp32 on cpu
    seed: int = 0  # weights of random:* models
    quant: str | None = None  # None | rtn | awq | gptq | module path (overrides phase5 of impl)
    quant_group_size: int = 128  # input columns per INT4 scale/zero-point
    tp: int = 1  # tensor-parallel ranks (phase 6)
    max_model_len: int | None = None  # prompt + new tokens per request (default: the model's context)
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 512
    block_size: int = 16
    num_blocks: int | None = None  # default: max_num_seqs requests of max_model_len
    policy: str = "sjf"
    max_wait_steps: int | None = 64
    preemption: str = "recompute"  # or "swap": victims' KV blocks go to a host pool (phase 4)
    swap_space: float = 4.0  # GiB of host KV blocks for preemption="swap"
    num_cpu_blocks: int | None = None  # the host pool in blocks (overrides swap_space)
    compile: bool = True  # CUDA graphs (phase 0, phase 4) on CUDA
    bs1_decode: str = "phase0"  # which engine decodes a lone request


@dataclass
class RequestOutput:
    prompt_ids: list[int]
    token_ids: list[int]  # new tokens, up to and including an EOS
    text: str  # EOS and stop strings excluded
    finish_reason: str  # "stop" (EOS or a stop string) | "length"
    ttft_s: float | None = None  # arrival to first token


@dataclass
class Delta:
    """A streamed increment: new text (may be empty while a stop string is undecided) and its ids."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # set on the last delta


@dataclass
class RunStats:
    """What the last ``generate`` did: which engine ran, and how full the KV memory it reserved was."""

    path: str
    requests: int
    new_tokens: int
    seconds: float
    kv_utilisation: float | None  # live token slots / reserved KV slots, mean over decode steps
    notes: list[str] = field(default_factory=list)


class LLMEngine:
    def __init__(self, config: EngineConfig = EngineConfig(), *, model: LoadedModel | None = None):
        self.config = config
        device = torch.device(config.device or (model.device.type if model is not None else
                                                ("cuda" if torch.cuda.is_available() else "cpu")))
        chosen = impl_spec.parse(config.impl)
        int4_model = model is None and is_int4_checkpoint(config.model)  # what `titaninfer quantize` wrote
        if int4_model and config.quant is not None:
            raise ModelError(f"{config.model} holds INT4 weights already: drop --quant")
        if config.quant is not None or int4_model:
            chosen["phase5"] = impl_spec.check_name("phase5", config.model if int4_model else config.quant or "off")
        self.impls = impl_spec.resolve(chosen, device.type)
        impl_spec.import_module_paths(self.impls)
        self.quant = impl_spec.quant_method(self.impls)
        if self.impls["phase2"] in ("framework", "solution") and device.type != "cuda":
            raise impl_spec.ImplSpecError(f"phase2={self.impls['phase2']} is a CUDA kernel: use phase2=reference "
                                          "or phase2=off on a CPU")
        if config.bs1_decode not in BS1_DECODE_PATHS:
            raise ModelError(f"bs1_decode={config.bs1_decode!r}: choose {' or '.join(BS1_DECODE_PATHS)}")
        dtype = config.dtype or ("bf16" if device.type == "cuda" else "fp32")
        self._quantized = None
        if int4_model:
            self.model, self._quantized = load_int4_checkpoint(config.model, dtype=dtype, device=device)
        else:
            self.model = model if model is not None else load_model(config.model, dtype=dtype, device=device,
                                                                    seed=config.seed)
        self.device = self.model.device
        limit = self.model.config.max_position_embeddings
        self.max_model_len = min(config.max_model_len or limit, limit)
        if config.tp > 1:
            from shared import tp_workers

            if self.quant:
                raise ModelError("INT4 (--quant) with tensor parallelism is not built: drop --quant or use --tp 1")
            if self.impls["phase4"] == "off":
                raise ModelError("tensor parallelism runs under phase 4's continuous batching: "
                                 "drop phase4=off or use --tp 1")
            tp_workers.check(self.model.config, config.tp, self.device.type, self.impls["phase6"])
        self.tp_workers = None  # shared.tp_workers.WorkerPool: ranks 1..tp-1, started with the batched path
        self._single = None
        self._batched = None
        self.last_run: RunStats | None = None

    # ------------------------------------------------------------------ the components
    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def single(self):
        """Phase 0's engine (with phase 2's RoPE / phase 5's INT4 weights when chosen), built on first use."""
        if self._single is None:
            if self.quant:
                from shared.quant import build_engine

                self._single = build_engine(self.model, self.quantized, max_seq_len=self.max_model_len,
                                            compile=self.config.compile)
            else:
                from phase0_prototype import load_impl

                options = {}
                if self.impls["phase2"] != "off":
                    from phase2_rope_cuda.integration import phase0_rope_fn

                    options["rope_fn"] = phase0_rope_fn(self.impls["phase2"])
                if self.impls["phase0"] == "solution" and self.device.type == "cpu":
                    options["sync_every"] = 1  # no device to keep fed: hand every token over at once
                engine = load_impl(self.impls["phase0"]).build(self.model, max_seq_len=self.max_model_len,
                                                               compile=self.config.compile, **options)
                if self._batched is not None:  # one copy of the fused weights (before any graph capture)
                    _share(self._batched.runner, engine)
                self._single = engine
            if hasattr(self._single, "warmup"):
                self._single.warmup()
        return self._single

    @property
    def quantized(self):
        """Phase 5's INT4 model (``--quant``), quantized or loaded once for both paths."""
        if self._quantized is None:
            from shared.quant import quantize

            self._quantized = quantize(self.model, self.quant, group_size=self.config.quant_group_size)
        return self._quantized

    @property
    def batched(self):
        """Phase 4's engine over phase 1's block manager and phase 3's attention (and phase 5's INT4
        projections with ``--quant``), built on first use."""
        if self._batched is None:
            if self.impls["phase4"] == "off":
                raise ModelError("phase4=off: this engine has no batched path (requests run one at a time)")
            from phase4_scheduler.engine import EngineConfig as BatchedConfig
            from phase4_scheduler.engine import LLMEngine as BatchedEngine
            from phase4_scheduler.plan import SchedulerConfig

            c = self.config
            try:
                sched = SchedulerConfig(c.max_num_seqs, c.max_num_batched_tokens, c.policy, c.max_wait_steps,
                                        preemption=c.preemption)
                batched = BatchedConfig(sched, self.impls["phase4"], c.num_blocks, c.block_size, cuda_graphs=c.compile,
                                        max_model_len=self.max_model_len, swap_space=c.swap_space,
                                        num_cpu_blocks=c.num_cpu_blocks, block_manager_impl=self.impls["phase1"],
                                        attention_impl=self.impls["phase3"])
            except ValueError as e:
                raise ModelError(str(e)) from None
            if c.tp > 1:
                from shared.tp_workers import start_engine

                self._batched, self.tp_workers = start_engine(self.model, batched, tp=c.tp, seed=c.seed,
                                                              layout=self.impls["phase6"])
            elif self.quant:
                from shared.quant import paged_weights

                weights, linear = paged_weights(self.quantized)
                self._batched = BatchedEngine(self.model, batched, weights=weights, linear=linear)
            else:  # one copy of the fused float weights when phase 0's engine exists already
                weights = getattr(self._single, "weights", None) if self._single is not None else None
                self._batched = BatchedEngine(self.model, batched, weights=weights)
        return self._batched

    def warmup(self, *, batched: bool = False) -> None:
        """Build what a lone request (and with ``batched``, many requests) will use and capture its CUDA
        graphs now, not during the first request."""
        if self.route(1) == "single":
            _ = self.single  # built (and its graph captured) on first access
        if (batched or self.route(1) == "batched") and self.route(2) == "batched":
            runner = self.batched.runner
            if runner.graphs is not None:
                runner.graphs.warmup()

    def describe(self) -> str:
        """Which implementation each phase runs, one line per phase, with what it contributes."""
        lines = []
        for key, comp in impl_spec.COMPONENTS.items():
            name = self.impls[key]
            if key == "phase6":
                name = f"{name} (tp={self.config.tp})" if self.config.tp > 1 else "off (tp=1)"
            lines.append(f"{key}={name:<12} {comp.role}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ requests
    def encode(self, prompt, *, chat: bool = False) -> list[int]:
        """Text (through the chat template when ``chat``), chat messages, or token ids -> ids."""
        if isinstance(prompt, str):
            return self.tokenizer.encode_chat([{"role": "user", "content": prompt}]) if chat else self.tokenizer.encode(prompt)
        items = list(prompt)
        if items and all(isinstance(m, Mapping) for m in items):
            return self.tokenizer.encode_chat(items)
        if all(isinstance(i, int) for i in items):
            return [int(i) for i in items]
        raise ModelError("a prompt is text, a list of token ids, or a list of chat messages")

    def check_request(self, ids: list[int], max_tokens: int) -> None:
        if not ids:
            raise ModelError("the prompt is empty: give at least one token")
        if max_tokens < 1:
            raise ModelError(f"max_tokens must be ≥ 1, got {max_tokens}")
        if len(ids) + max_tokens > self.max_model_len:
            raise ModelError(f"prompt of {len(ids)} tokens + {max_tokens} new tokens exceeds the context of "
                             f"{self.max_model_len} tokens ({self.model.name}): shorten the prompt or lower "
                             "--max-new-tokens")

    def route(self, num_requests: int) -> str:
        """Which path a call with ``num_requests`` prompts takes: "single" or "batched"."""
        if self.config.tp > 1:
            return "batched"  # rank 0's phase 4 engine drives the tensor-parallel workers
        if self.impls["phase4"] == "off":
            return "single"
        return "single" if num_requests == 1 and self.config.bs1_decode == "phase0" else "batched"

    def generate(self, prompts, sampling: SamplingParams | None = None, *, max_tokens: int | Sequence[int] = 64,
                 stop: Sequence[str] = (), ignore_eos: bool = False, chat: bool = False) -> list[RequestOutput]:
        """Offline: every prompt to completion. ``prompts``: one prompt or a list (text, ids or messages)."""
        if isinstance(prompts, str) or (isinstance(prompts, Sequence) and prompts
                                        and isinstance(prompts[0], (int, Mapping))):
            prompts = [prompts]  # one prompt: ids or a conversation
        ids = [self.encode(p, chat=chat) for p in prompts]
        limits = [max_tokens] * len(ids) if isinstance(max_tokens, int) else list(max_tokens)
        if len(limits) != len(ids):
            raise ModelError(f"{len(limits)} max_tokens values for {len(ids)} prompts")
        for p, n in zip(ids, limits, strict=True):
            self.check_request(p, n)
        sampling = sampling or GREEDY
        route = self.route(len(ids))
        t0 = time.perf_counter()
        if route == "batched":
            from shared.batched import run_batched

            outputs, kv = run_batched(self.batched, ids, limits, sampling, tuple(stop), ignore_eos)
        else:
            outputs = [single_output(self.single, self.tokenizer, p, n, sampling, tuple(stop), ignore_eos)
                       for p, n in zip(ids, limits, strict=True)]
            kv = static_kv_utilisation(self.single, ids, outputs)
        self.last_run = RunStats(self.path_name(route), len(ids), sum(len(o.token_ids) for o in outputs),
                                 time.perf_counter() - t0, kv)
        return outputs

    def stream(self, prompt, sampling: SamplingParams | None = None, *, max_tokens: int = 64,
               stop: Sequence[str] = (), ignore_eos: bool = False, chat: bool = False) -> Iterator[Delta]:
        """One request, its text as it is generated (the single-request engine unless routed elsewhere)."""
        ids = self.encode(prompt, chat=chat)
        self.check_request(ids, max_tokens)
        sampling = sampling or GREEDY
        route = self.route(1)
        if route == "batched":
            from shared.batched import stream_batched

            yield from stream_batched(self.batched, ids, max_tokens, sampling, tuple(stop), ignore_eos)
        else:
            yield from single_deltas(self.single, self.tokenizer, ids, max_tokens, sampling, tuple(stop), ignore_eos)

    def path_name(self, route: str) -> str:
        if route == "batched":
            int4 = f", phase 5 INT4 ({self.quant})" if self.quant else ""
            tp = (f", phase 6 tensor parallel tp={self.config.tp} ({self.impls['phase6']})"
                  if self.config.tp > 1 else "")
            return (f"phase 4 continuous batching ({self.impls['phase4']}; phase1={self.impls['phase1']}, "
                    f"phase3={self.impls['phase3']}{int4}{tp})")
        engine = self._single
        mode = f": {engine.mode}" if engine is not None else ""
        if self.quant:
            return f"phase 5 INT4 ({self.quant}) one request at a time{mode}"
        return f"phase 0 {self.impls['phase0']} one request at a time{mode}"

    # ------------------------------------------------------------------ tensor parallel
    def close(self) -> None:
        """End the tensor-parallel worker processes, if started (they also end at interpreter exit); the
        next batched call starts new ones."""
        if self.tp_workers is not None:
            self.tp_workers.close()
            self.tp_workers, self._batched = None, None


def _share(source, target) -> None:
    """Point ``target``'s fused weights at ``source``'s (same ``weights.fuse`` layout), freeing a copy."""
    from phase0_prototype.weights import LlamaWeights

    w = getattr(source, "weights", None)
    if isinstance(w, LlamaWeights) and isinstance(getattr(target, "weights", None), LlamaWeights):
        target.weights = w
