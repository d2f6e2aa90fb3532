"""``LLMEngine``: the phases' solutions composed into one engine, each phase's part selectable (``--impl``).

Every request runs through one loop, phase 4's scheduler over its paged runner (``shared.batched``), in every
configuration: a lone request is batch 1 of that loop, and a decode step of few rows on a GPU is phase 0's
fused Triton step over the paged cache. The phases plug into the one model (``phase0_prototype.model``):

- the KV store: phase 1's block manager and phase 3's paged attention; RoPE: phase 2's kernel (``--rope cuda``);
- the linear layers: phase 5's INT4 projections (``quant``: quantized once, or a checkpoint written by
  ``titaninfer quantize``), whose W4A16 kernels are then the fused step's linear kernels;
- ``tp > 1``: phase 6's shards of those layers (float or INT4) on every rank, the same engine on rank 0
  driving the others each step (``shared.tp_workers``: workers started once, ended by ``close``).

``phase4=off`` is the prototype: phase 0's engine, one request at a time (``shared.single``); the
same engine is ``single``, the yardstick ``make check-engine`` compares the loop's bs=1 decode with
(``reports/shared/``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch

from phase0_prototype.errors import ModelError
from phase0_prototype.sampling import GREEDY, SamplingParams
from phase0_prototype.sources import LoadedModel, load_model
from phase0_prototype.tokenizer import read_chat_template
from phase0_prototype.weights import LlamaWeights

from . import impls as impl_spec
from .batched import build_batched, run_batched, stream_batched
from .outputs import Delta, RequestOutput, RunStats
from .quant import is_int4_checkpoint, load_int4_checkpoint
from .single import build_single, single_deltas, single_output, static_kv_utilisation

DEFAULT_MODEL = "kjv-llama-18m"  # the bundled model: offline, CPU-friendly


@dataclass(frozen=True)
class EngineConfig:
    model: str = DEFAULT_MODEL  # hub id, HF directory, bundled name, random:tinyllama, random:tiny
    impl: str | Sequence[str] | Mapping[str, str] = "solution"  # --impl spec (shared.impls)
    device: str | None = None  # default: cuda when available
    dtype: str | None = None  # default: bf16 on cuda, fp32 on cpu
    seed: int = 0  # weights of random:* models
    quant: str | None = None  # None | rtn | awq | gptq | module path | INT4 directory (sets phase5)
    quant_group_size: int = 128  # input columns per INT4 scale/zero-point
    tp: int = 1  # tensor-parallel ranks (phase 6)
    max_model_len: int | None = None  # prompt + new tokens per request (default: the model's context)
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 512
    block_size: int = 16
    num_blocks: int | None = None  # default: max_num_seqs requests of max_model_len
    gpu_memory_utilization: float | None = None  # CUDA, num_blocks unset: the KV pool from this share of memory
    policy: str = "sjf"
    max_wait_steps: int | None = 64
    preemption: str = "recompute"  # or "swap": victims' KV blocks go to a host pool (phase 4)
    swap_space: float = 4.0  # GiB of host KV blocks for preemption="swap"
    num_cpu_blocks: int | None = None  # the host pool in blocks (overrides swap_space)
    compile: bool = True  # CUDA graphs on CUDA
    enable_prefix_caching: bool = False  # reuse cached KV blocks of shared prompt prefixes (phase 4, phase 1)
    chat_template: str | None = None  # a Jinja file or template in place of the model's (vLLM's --chat-template)


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
        if config.enable_prefix_caching and self.impls["phase4"] == "off":
            raise ModelError("--enable-prefix-caching needs phase 4's scheduler: drop phase4=off")
        if self.impls["phase2"] in ("framework", "solution") and device.type != "cuda":
            raise impl_spec.ImplSpecError(f"phase2={self.impls['phase2']} is a CUDA kernel: use phase2=reference "
                                          "or phase2=off on a CPU")
        dtype = config.dtype or ("bf16" if device.type == "cuda" else "fp32")
        self._quantized = None
        if int4_model:
            self.model, self._quantized = load_int4_checkpoint(config.model, dtype=dtype, device=device)
        else:
            self.model = model if model is not None else load_model(config.model, dtype=dtype, device=device,
                                                                    seed=config.seed)
        if config.chat_template is not None:
            self.model.tokenizer.chat_template = read_chat_template(config.chat_template)
        self.device = self.model.device
        limit = self.model.config.max_position_embeddings
        self.max_model_len = min(config.max_model_len or limit, limit)
        if config.tp > 1:
            from . import tp_workers

            if self.impls["phase4"] == "off":
                raise ModelError("tensor parallelism runs under phase 4's continuous batching: "
                                 "drop phase4=off or use --tp 1")
            tp_workers.check(self.model.config, config.tp, self.device.type, self.impls["phase6"],
                             quant=self.quant or None, group_size=config.quant_group_size)
        self.tp_workers = None  # shared.tp_workers.WorkerPool: ranks 1..tp-1, started with the loop
        self._single = self._batched = None
        self.last_run: RunStats | None = None

    # ------------------------------------------------------------------ the components, built on first use
    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def quantized(self):
        """Phase 5's INT4 model (``--quant``), quantized or loaded once for every path."""
        if self._quantized is None:
            from .quant import quantize

            self._quantized = quantize(self.model, self.quant, group_size=self.config.quant_group_size)
        return self._quantized

    @property
    def batched(self):
        """Phase 4's engine: the one loop (``shared.batched.build_batched``)."""
        if self._batched is None:
            if self.impls["phase4"] == "off":
                raise ModelError("phase4=off: this engine has no scheduler (requests run one at a time)")
            self._batched, self.tp_workers = build_batched(self)
        return self._batched

    @property
    def single(self):
        """Phase 0's engine over the same weights: ``phase4=off``'s path, and the bs=1 yardstick."""
        if self._single is None:
            self._single = build_single(self)
        return self._single

    def float_weights(self):
        """The fused float weights a path built already (the other then shares them); None with INT4 or TP."""
        if self.quant or self.config.tp > 1:
            return None
        for part in (self._single, self._batched.runner if self._batched is not None else None):
            if isinstance(getattr(part, "weights", None), LlamaWeights):
                return part.weights
        return None

    def warmup(self) -> None:
        """Build what requests will use and capture its CUDA graphs now, not during the first request."""
        if self.route() == "single":
            _ = self.single  # built (and its graph captured) on first access
        elif self.batched.runner.graphs is not None:
            self.batched.runner.graphs.warmup()

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

    def route(self) -> str:
        """"batched" (phase 4's loop) or, with ``phase4=off``, "single" (phase 0's engine, one at a time)."""
        return "single" if self.impls["phase4"] == "off" else "batched"

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
        sampling, t0 = sampling or GREEDY, time.perf_counter()
        if self.route() == "batched":
            outputs, kv = run_batched(self.batched, ids, limits, sampling, tuple(stop), ignore_eos)
        else:
            outputs = [single_output(self.single, self.tokenizer, p, n, sampling, tuple(stop), ignore_eos)
                       for p, n in zip(ids, limits, strict=True)]
            kv = static_kv_utilisation(self.single, ids, outputs)
        self.last_run = RunStats(self.path_name(), len(ids), sum(len(o.token_ids) for o in outputs),
                                 time.perf_counter() - t0, kv)
        return outputs

    def stream(self, prompt, sampling: SamplingParams | None = None, *, max_tokens: int = 64,
               stop: Sequence[str] = (), ignore_eos: bool = False, chat: bool = False) -> Iterator[Delta]:
        """One request, its text as it is generated."""
        ids = self.encode(prompt, chat=chat)
        self.check_request(ids, max_tokens)
        args = (ids, max_tokens, sampling or GREEDY, tuple(stop), ignore_eos)
        if self.route() == "batched":
            yield from stream_batched(self.batched, *args)
        else:
            yield from single_deltas(self.single, self.tokenizer, *args)

    def path_name(self) -> str:
        """What serves requests, in words (the CLI prints it)."""
        if self.route() == "single":
            mode = f": {self._single.mode}" if self._single is not None else ""
            what = f"phase 5 INT4 ({self.quant})" if self.quant else f"phase 0 {self.impls['phase0']}"
            return f"{what} one request at a time{mode}"
        extra = [f"phase 5 INT4 ({self.quant})"] if self.quant else []
        if self.impls["phase2"] != "off":
            extra.append(f"phase 2 RoPE ({self.impls['phase2']})")
        if self.config.tp > 1:
            extra.append(f"phase 6 tensor parallel tp={self.config.tp} ({self.impls['phase6']})")
        return (f"phase 4 continuous batching ({self.impls['phase4']}; phase1={self.impls['phase1']}, "
                f"phase3={self.impls['phase3']}{''.join(', ' + e for e in extra)})")

    def close(self) -> None:
        """End the tensor-parallel worker processes, if started (they also end at interpreter exit); the
        next request starts new ones."""
        if self.tp_workers is not None:
            self.tp_workers.close()
            self.tp_workers, self._batched = None, None
