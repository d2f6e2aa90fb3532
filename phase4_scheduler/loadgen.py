"""Load generator: a mixed workload (50 % short / 50 % long outputs) sent to a server over HTTP
(Poisson arrivals at a rate, or a closed loop of N concurrent clients), or run offline through the
engine; reports throughput, TTFT and TPOT percentiles, KV usage, and the requests lost or refused.
Optionally mixed prompt lengths and clients that hang up after their first tokens (a served request the
server must abort, not stream to nobody).

TTFT is arrival to the first streamed token; TPOT is the mean gap between a request's later tokens.
Requests ask for ``ignore_eos`` so every one produces exactly its ``max_tokens`` (the workload, not
the model, decides the lengths).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass

PROMPT_WORDS = "And the earth was without form and void and darkness was upon the face of the deep".split()


@dataclass
class Workload:
    num_requests: int = 64
    short_tokens: int = 10
    long_tokens: int = 200
    short_fraction: float = 0.5
    prompt_words: int = 12
    rate: float | None = None  # requests/s, Poisson; None = all at once (or closed loop)
    concurrency: int | None = None  # closed loop: this many clients, each sends its next request when done
    seed: int = 0
    prompt_words_max: int | None = None  # prompts of prompt_words..prompt_words_max words (uniform) when set
    hangup_fraction: float = 0.0  # these clients close the stream after HANGUP_AFTER chunks

    def requests(self) -> list[tuple[float, int, str]]:
        """(arrival offset in s, max_tokens, prompt) per request, shuffled short/long, fixed by ``seed``."""
        rng = random.Random(self.seed)
        n_short = round(self.num_requests * self.short_fraction)
        lengths = [self.short_tokens] * n_short + [self.long_tokens] * (self.num_requests - n_short)
        rng.shuffle(lengths)
        lengths_of = None
        if self.prompt_words_max is not None:  # drawn apart: the arrivals and outputs stay the same
            words_rng = random.Random(self.seed + 2)
            lengths_of = iter([words_rng.randint(self.prompt_words, self.prompt_words_max) for _ in lengths])
        t, out = 0.0, []
        for n in lengths:
            if self.rate:
                t += rng.expovariate(self.rate)
            start = rng.randrange(len(PROMPT_WORDS))
            words = next(lengths_of) if lengths_of else self.prompt_words
            prompt = " ".join((PROMPT_WORDS * (words // len(PROMPT_WORDS) + 2))[start:start + words])
            out.append((t if self.rate else 0.0, n, prompt))
        return out

    def hangups(self) -> set[int]:
        """Indices (into ``requests()``) of the clients that hang up; their own RNG, so the rest of the
        workload is the same with or without them."""
        rng = random.Random(self.seed + 1)
        return set(rng.sample(range(self.num_requests), round(self.hangup_fraction * self.num_requests)))


HANGUP_AFTER = 2  # SSE chunks a hanging-up client reads before it closes the connection


@dataclass
class Record:
    max_tokens: int
    status: int = 0  # HTTP status (200, 429, ...); 0 = connection failed
    sent: float = 0.0
    first: float | None = None
    last: float | None = None
    tokens: int = 0
    finish_reason: str | None = None
    hangup: bool = False  # this client closes the stream after HANGUP_AFTER chunks (not counted as lost)

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.finish_reason is not None

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.sent

    @property
    def tpot(self) -> float | None:
        if self.first is None or self.last is None or self.tokens < 2:
            return None
        return (self.last - self.first) / (self.tokens - 1)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


def summarize(records: list[Record], seconds: float, kv_samples: list[float] = ()) -> dict:
    ok = [r for r in records if r.ok]
    ttft = [r.ttft for r in ok if r.ttft is not None]
    tpot = [r.tpot for r in ok if r.tpot is not None]
    tokens = sum(r.tokens for r in ok)
    latency_short = [r.last - r.sent for r in ok if r.last is not None and r.max_tokens == min(x.max_tokens for x in records)]
    return {
        "requests": len(records), "completed": len(ok), "rejected": sum(r.status == 429 for r in records),
        "hung_up": sum(r.hangup and r.status == 200 and not r.ok for r in records),
        "failed": sum(r.status != 429 and not r.ok and not (r.hangup and r.status == 200) for r in records),
        "seconds": seconds,
        "throughput_tok_s": tokens / seconds if seconds > 0 else 0.0,
        "ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99),
        "tpot_p50": percentile(tpot, 50), "tpot_p99": percentile(tpot, 99),
        "short_latency_mean": statistics.fmean(latency_short) if latency_short else float("nan"),
        "kv_usage_mean": statistics.fmean(kv_samples) if kv_samples else float("nan"),
        "kv_usage_max": max(kv_samples) if kv_samples else float("nan"),
    }


# ---------------------------------------------------------------------------------------------- HTTP
async def _one(client, url: str, model: str, max_tokens: int, prompt: str, record: Record, **extra) -> None:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "ignore_eos": True, **extra}
    record.sent = time.perf_counter()
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
            record.status = resp.status_code
            if resp.status_code != 200:
                await resp.aread()
                return
            chunks = 0
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                now = time.perf_counter()
                choice = json.loads(line[6:])["choices"][0]
                if record.first is None:
                    record.first = now
                record.last = now
                if choice.get("finish_reason"):
                    record.finish_reason = choice["finish_reason"]
                chunks += 1
                if record.hangup and chunks >= HANGUP_AFTER and not record.finish_reason:
                    return  # leaving the block closes the connection mid-stream
        record.tokens = max_tokens if record.finish_reason == "length" else record.tokens
    except Exception:  # noqa: BLE001 - a failed connection is a lost request, counted as such
        record.status = 0


async def _kv_sampler(client, url: str, samples: list[float], done: asyncio.Event) -> None:
    while not done.is_set():
        try:
            text = (await client.get(f"{url}/metrics")).text
            for line in text.splitlines():
                if line.startswith("titaninfer_kv_cache_usage_ratio "):
                    samples.append(float(line.split()[1]))
        except Exception:  # noqa: BLE001 - metrics are best effort during a load run
            pass
        try:
            await asyncio.wait_for(done.wait(), 0.2)
        except asyncio.TimeoutError:
            pass


async def run_http(url: str, model: str, workload: Workload, timeout: float = 600.0) -> dict:
    import httpx

    reqs, hangups = workload.requests(), workload.hangups()
    records = [Record(n, hangup=i in hangups) for i, (_, n, _) in enumerate(reqs)]
    kv: list[float] = []
    limits = httpx.Limits(max_connections=max(len(reqs), 1) + 2)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        done = asyncio.Event()
        sampler = asyncio.create_task(_kv_sampler(client, url, kv, done))
        t0 = time.perf_counter()
        if workload.concurrency:
            queue = list(zip(reqs, records, strict=True))

            async def worker():
                while queue:
                    (_, n, prompt), rec = queue.pop(0)
                    await _one(client, url, model, n, prompt, rec)

            await asyncio.gather(*(worker() for _ in range(workload.concurrency)))
        else:
            async def delayed(offset, n, prompt, rec):
                await asyncio.sleep(max(0.0, t0 + offset - time.perf_counter()))
                await _one(client, url, model, n, prompt, rec)

            await asyncio.gather(*(delayed(o, n, p, rec) for (o, n, p), rec in zip(reqs, records, strict=True)))
        seconds = time.perf_counter() - t0
        done.set()
        await sampler
    return summarize(records, seconds, kv)


# ---------------------------------------------------------------------------------------------- offline
def run_offline(engine, workload: Workload) -> dict:
    """All requests through ``engine.generate`` at once (arrival offsets ignored): no HTTP, no threads."""
    from phase0_prototype.sampling import SamplingParams

    tok = engine.tokenizer
    requests = [engine.make_request(tok.encode(p), n, SamplingParams(), ignore_eos=True)
                for _, n, p in workload.requests()]
    kv: list[float] = []
    t0 = time.perf_counter()
    for r in requests:
        r.arrival_time = t0
    engine.generate(requests, on_step=lambda e: kv.append(e.scheduler.kv_usage()))
    seconds = time.perf_counter() - t0
    records = [Record(r.max_tokens, 200, r.arrival_time, r.first_token_time, r.finish_time, len(r.output_ids),
                      r.finish_reason) for r in requests]
    return summarize(records, seconds, kv)


def add_arguments(p) -> None:
    p.add_argument("--url", default=None, help="server base URL (omit for offline mode with --model)")
    p.add_argument("--model", default="kjv-llama-18m")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--rate", type=float, default=None, help="Poisson arrivals per second")
    p.add_argument("--concurrency", type=int, default=None, help="closed-loop clients")
    p.add_argument("--short-tokens", type=int, default=10)
    p.add_argument("--long-tokens", type=int, default=200)
    p.add_argument("--prompt-words", type=int, default=12, help="prompt length in words (the minimum with --prompt-words-max)")
    p.add_argument("--prompt-words-max", type=int, default=None, help="prompts of --prompt-words..this many words")
    p.add_argument("--hangup-fraction", type=float, default=0.0,
                   help=f"share of clients that close the stream after {HANGUP_AFTER} chunks")
    p.add_argument("--seed", type=int, default=0)


def workload_of(args) -> Workload:
    return Workload(args.num_requests, args.short_tokens, args.long_tokens, prompt_words=args.prompt_words,
                    rate=args.rate, concurrency=args.concurrency, seed=args.seed,
                    prompt_words_max=args.prompt_words_max, hangup_fraction=args.hangup_fraction)


def main(args) -> None:
    w = workload_of(args)
    if args.url:
        summary = asyncio.run(run_http(args.url.rstrip("/"), args.model, w))
    else:
        from phase0_prototype.sources import load_model
        from phase4_scheduler.engine import BatchingEngine

        dtype = "bf16" if args.device.startswith("cuda") else "fp32"
        summary = run_offline(BatchingEngine(load_model(args.model, dtype=dtype, device=args.device)), w)
    print(json.dumps(summary, indent=2))
