"""Online serving through the HTTP server at three request rates, under the server's default flags and other
settings, beside the offline engine on the same requests (P4.11, P4.12).

A user who starts ``titaninfer serve`` without tuning should not leave throughput on the table (P4.11: the
default flags' throughput at saturation ≥ 0.9× the best setting tried — other scheduler budgets, and more API
server processes in front of the engine, ``api_servers``), and the host path — HTTP, SSE, tokenizing,
detokenizing, the engine loop — should keep up with the GPU (P4.12: online throughput at saturation with the
default flags ≥ 0.5× the same engine's offline on the same requests). The load is phase 4's mixed workload with
mixed prompt lengths: Poisson arrivals at two rates, where a tenth of the clients hang up after their first
tokens, then all requests at once (saturation, nobody hangs up). The clients run in a child process, never on
the server's GIL. Limit: a rate above what a setting sustains just queues (TTFT grows), which the table shows.
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

from phase4_scheduler.loadgen import Workload, run_offline
from phase4_scheduler.plan import SERVING_DEFAULTS, SchedulerConfig

SIZES = {
    # settings: name -> (max_num_seqs, max_num_batched_tokens, API server processes)
    "small": dict(model="kjv-llama-18m", dtype="fp32", device="cpu", requests=12, short=8, long=24,
                  prompt_words=(8, 40), rates=(4.0,),
                  configs={"default": (*SERVING_DEFAULTS["cpu"], 1), "4 × 64": (4, 64, 1),
                           "2 API processes": (*SERVING_DEFAULTS["cpu"], 2)}),
    "full": dict(model="random:tinyllama", dtype="bf16", device="cuda", requests=256, short=10, long=200,
                 prompt_words=(12, 400), rates=(16.0, 64.0),
                 configs={"default": (*SERVING_DEFAULTS["cuda"], 1), "128 × 2048": (128, 2048, 1),
                          "512 × 8192": (512, 8192, 1), "4 API processes": (*SERVING_DEFAULTS["cuda"], 4)}),
}
HANGUP_FRACTION = 0.1


def run_clients(url: str, model: str, w: Workload, timeout: float = 900.0) -> dict:
    """``loadgen.run_http``'s summary, the clients in a child process (``python -m phase4_scheduler loadgen``:
    off this process's GIL, and no re-import of the caller's main module)."""
    argv = [sys.executable, "-m", "phase4_scheduler", "loadgen", "--url", url, "--model", model,
            "--num-requests", str(w.num_requests), "--short-tokens", str(w.short_tokens),
            "--long-tokens", str(w.long_tokens), "--prompt-words", str(w.prompt_words),
            "--hangup-fraction", str(w.hangup_fraction), "--seed", str(w.seed)]
    for flag, value in (("--rate", w.rate), ("--concurrency", w.concurrency), ("--prompt-words-max", w.prompt_words_max)):
        if value is not None:
            argv += [flag, str(value)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"the load-generating client failed (exit {done.returncode}): "
                           f"{done.stderr.strip().splitlines()[-1:] or ['no output']}")
    return json.loads(done.stdout)


def serve_and_load(s: dict, seqs: int, budget: int, api_servers: int = 1,
                   impl: str = "solution") -> tuple[dict, dict]:
    """One server with ``seqs`` × ``budget`` (``api_servers`` processes in front of the engine's): {rate label:
    summary} for each Poisson rate and the burst, then ``{"offline": ...}`` of the burst's requests through the
    same engine with the server stopped."""
    from phase4_scheduler.api_servers import ApiServers
    from phase4_scheduler.serve import ServerThread, start_engine_loop
    from phase4_scheduler.server import create_app

    lo, hi = s["prompt_words"]
    base = Workload(s["requests"], s["short"], s["long"], prompt_words=lo, prompt_words_max=hi)
    loop = start_engine_loop(s["model"], device=s["device"], dtype=s["dtype"], scheduler_impl=impl,
                             scheduler=SchedulerConfig(seqs, budget), max_queue=s["requests"], say=lambda _: None)
    if api_servers > 1:
        server = ApiServers(loop, s["model"], api_servers, max_queue=s["requests"]).wait_ready()
    else:
        server = ServerThread(create_app(loop, s["model"])).start()
    runs = {}
    try:
        for rate in s["rates"]:
            runs[f"{rate:g} req/s"] = run_clients(server.url, s["model"],
                                                  replace(base, rate=rate, hangup_fraction=HANGUP_FRACTION))
        runs["burst"] = run_clients(server.url, s["model"], base)
    finally:
        server.stop()
        loop.shutdown()
    return runs, {"offline": run_offline(loop.engine, base)}


def measure_online(result, size: str, impl: str = "solution") -> None:
    """P4.11 and P4.12's metrics and the table (every setting × rate) into a ``BenchResult``."""
    s = SIZES[size]
    rows, burst, offline = [], {}, None
    for name, (seqs, budget, api_servers) in s["configs"].items():
        runs, off = serve_and_load(s, seqs, budget, api_servers, impl)
        burst[name] = runs["burst"]["throughput_tok_s"]
        if name == "default":
            offline = off["offline"]
        for label, m in runs.items():
            rows.append(f"| {name} ({seqs} seqs, {budget} tokens, {api_servers} API process"
                        f"{'es' if api_servers > 1 else ''}) | {label} | {m['throughput_tok_s']:,.0f} | "
                        f"{m['ttft_p50'] * 1e3:.0f} / {m['ttft_p99'] * 1e3:.0f} | "
                        f"{m['tpot_p50'] * 1e3:.1f} / {m['tpot_p99'] * 1e3:.1f} | {m['completed']} / {m['requests']} | "
                        f"{m['hung_up']} | {m['rejected'] + m['failed']} |")
    best = max(burst, key=burst.get)
    ratios = {"online_default_vs_best": burst["default"] / burst[best],
              "online_vs_offline": burst["default"] / offline["throughput_tok_s"]}
    lo, hi = s["prompt_words"]
    result.tables[f"Online serving ({s['model']}, {s['requests']} requests a run: {s['short']} / {s['long']} output "
                  f"tokens, prompts of {lo}–{hi} words; {HANGUP_FRACTION:.0%} of clients hang up at the Poisson "
                  "rates)"] = "\n".join(
        ["| scheduler setting | load | output tok/s | TTFT p50 / p99 (ms) | TPOT p50 / p99 (ms) | completed | "
         "hung up | refused or failed |", "|---|---|---|---|---|---|---|---|", *rows,
         f"| default, offline (no server) | burst's requests | {offline['throughput_tok_s']:,.0f} | "
         f"{offline['ttft_p50'] * 1e3:.0f} / {offline['ttft_p99'] * 1e3:.0f} | "
         f"{offline['tpot_p50'] * 1e3:.1f} / {offline['tpot_p99'] * 1e3:.1f} | "
         f"{offline['completed']} / {offline['requests']} | – | – |"])
    result.notes.append(f"Online serving: at saturation (burst) the default flags stream {burst['default']:,.0f} output "
                        f"tok/s, {ratios['online_default_vs_best']:.2f}× the best setting tried ({best}), "
                        f"{ratios['online_vs_offline']:.2f}× the same engine offline.")
    if s["device"] == "cuda":
        result.metrics.update(ratios)
        return
    for metric in ratios:
        result.skip(metric, "bars set for a GPU: on a CPU the forward pass, not the host path, sets the pace "
                            "(figures in the online serving table)")

