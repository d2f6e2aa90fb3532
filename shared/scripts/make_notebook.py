"""Write shared/notebook.ipynb (this script is the lesson's source of truth).

From the repository root: ``python shared/scripts/make_notebook.py``, then execute it with
``jupyter nbconvert --to notebook --execute --inplace shared/notebook.ipynb``.
"""

from pathlib import Path

from module0_profiling.notebook_source import NotebookSource

nb = NotebookSource()
md, code = nb.md, nb.code

md(r"""
# The assembled engine — every phase in one `LLMEngine`

Each phase built one part; `shared.LLMEngine` puts them together and lets you swap any part back to its
framework (or to your own module) with an `--impl` spec such as `phase3=framework`:

| phase | its part in the engine |
|---|---|
| 0 | model, weights, tokenizer; the single-request engine (static KV cache, decode step in one CUDA graph) |
| 1 | the KV block manager the scheduler allocates from |
| 2 | RoPE (phase 0's decode kernel fuses its own; `phase2=solution` plugs the CUDA kernel in) |
| 3 | paged attention of the batched runner |
| 4 | continuous batching (`phase4=off`: one request at a time) |
| 5 | INT4 weights (`quant="awq"`) |
| 6 | tensor parallelism (`tp=2`) |

This notebook: build the engine, generate and stream, see which path a request takes, watch the same
tokens come out of every combination, then measure what each phase adds. On a CPU it uses the bundled
model and `random:tiny`; cells whose numbers change run to run are marked `# NBVAL_IGNORE_OUTPUT`.
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
from module0_profiling.notebook_env import import_phases_as_packages
import_phases_as_packages()  # this folder's kernels/ must not shadow the `kernels` package transformers imports
import torch
from phase0_prototype import SamplingParams
from titaninfer import EngineConfig, LLMEngine  # the engine (this folder, installed as titaninfer)

GPU = torch.cuda.is_available()
if not GPU:
    torch.set_num_threads(1)
engine = LLMEngine(EngineConfig(model="kjv-llama-18m"))
print(engine.describe())
""")
md(r"""
## Generate, stream, batch

`generate` takes one prompt or a list. A lone prompt goes to phase 0's engine (the fastest bs=1 decode
the phases have); a list goes through phase 4's continuous batching. `stream` yields text as it comes.
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
out = engine.generate("And God said,", max_tokens=24)[0]
print(out.text, "|", out.finish_reason, "|", engine.last_run.path)
for delta in engine.stream("In the beginning", SamplingParams(0.8, top_p=0.95, seed=0), max_tokens=24):
    print(delta.text, end="", flush=True)
print()
outs = engine.generate(["Blessed are", "The LORD is my", "And Jesus said"], max_tokens=16)
print(engine.last_run.path, f"KV utilisation {engine.last_run.kv_utilisation:.0%}")
for o in outs:
    print("-", o.text)
""")
md(r"""
## The same tokens from every combination

Greedy decoding is deterministic, so swapping one phase's implementation must not change a single
token (in fp32). This is what `shared/tests/test_engine_parity.py` checks against HF transformers.
""")
code(r"""
from phase0_prototype import load_model

tiny = load_model("random:tiny", dtype="fp32")
prompts = [[1, 50, 60, 70, 80], [1, 90, 91], [1, 200, 201, 202, 203, 204, 205]]
specs = ["framework", "solution,phase4=off", "solution", "phase1=reference,phase4=framework"]
results = {}
for spec in specs:
    e = LLMEngine(EngineConfig(model="random:tiny", impl=spec), model=tiny)
    results[spec] = [o.token_ids for o in e.generate(prompts, max_tokens=8, ignore_eos=True)]
    print(f"{spec:<36} {e.last_run.path}")
assert all(r == results["framework"] for r in results.values())
print("identical tokens from", len(specs), "combinations")
""")
md(r"""
## What each phase adds

`make check-engine` measures the full table on a GPU (TinyLlama shapes, HF transformers beside it). The
small run below is the same code at CPU sizes: the *ratios* between rows are the lesson, not the numbers.

*Questions.* Continuous batching multiplies throughput but leaves bs=1 latency where phase 0 put it — why?
Why is the static cache's KV utilisation so low, and what does a block of 16 tokens cost the paged one?
""")
code(r"""
# NBVAL_IGNORE_OUTPUT
import tempfile
from IPython.display import Markdown
from titaninfer.bench import run

result = run("solution", "small", out_dir=tempfile.mkdtemp())
Markdown(result.tables["The engine, phase by phase (beside HF transformers)"].replace("../../", "../"))
""")
md(r"""
## Your turn

- Swap one phase for your own module: `LLMEngine(EngineConfig(impl="phase3=phase3_paged_attention.mine"))`, or
  on the command line `titaninfer generate --impl phase3=phase3_paged_attention.mine`.
- `titaninfer chat` talks to the model through its chat template; `titaninfer serve` is the OpenAI server.
- `make check-engine` (E.1: bs=1 decode ≥ 75 % MBU; offline throughput ≥ 3× HF `generate_batch`) writes
  `reports/shared/<device>.md`; `titaninfer report` regenerates every phase's report.
""")

nb.write(Path(__file__).resolve().parents[1])
