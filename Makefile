# Two commands set everything up: `make demo` and `make test`. Both create .venv when it is missing.
# torch and torchvision are installed first, pinned, so that no later dependency pulls another build.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUTPUTS := outputs
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/.cache/torchinductor
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
export GRADIO_TEMP_DIR := $(CURDIR)/.cache/gradio
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: setup test lint format demo bench clean notebooks lab

$(BIN)/python:
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1

# The CPU decoding kernels (llamagen/fast/kernels) are built here, once, rather than at the first generation.
$(STAMP): $(BIN)/python pyproject.toml $(wildcard llamagen/fast/kernels/*.cpp llamagen/fast/kernels/*.h)
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -m llamagen.fast.kernels
	touch $(STAMP)

setup: $(STAMP)

# The browser tests drive Debian's Chromium (Playwright's own download cannot run here); LLAMAGEN_REQUIRE_BROWSER
# makes a missing browser fail them instead of skipping them.
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	DEBIAN_FRONTEND=noninteractive apt-get install -y chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

test: setup $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	LLAMAGEN_REQUIRE_BROWSER=1 $(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Re-execute the notebooks in place (outputs kept, volatile metadata stripped); `make test` checks them with nbval.
notebooks: setup
	cd notebooks && ../$(BIN)/python execute.py

# The notebooks in JupyterLab (widgets included), served on this machine only (as root too, as in a container).
lab: setup
	$(BIN)/jupyter lab --notebook-dir=notebooks --ip=127.0.0.1 $(if $(filter 0,$(shell id -u)),--allow-root)

# The Gradio apps with the embedded models, on http://127.0.0.1:7860 (MODELS=file.json adds published checkpoints).
demo: setup
	$(BIN)/llamagen demo $(if $(MODELS),--models $(MODELS))

# Decoding speed (GPT-B, random weights) against the original's loop and the memory-bandwidth bound:
# prints a table and writes it to benchmarks/results/decode_cpu_DATE.md (about half an hour); then how fast
# llamagen's product kernel reads the weights against torch's (benchmarks/results/small_batch_linear_DATE.md);
# then the tokenizers' encode and decode against the original's way and the compute floor (a few minutes;
# benchmarks/results/tokenizer_cpu_DATE.md); then token surgery's local re-decode against a full decode
# (benchmarks/results/token_surgery_cpu_DATE.md); then `llamagen sample`'s images per second at each batch size
# (benchmarks/results/sample_cpu_DATE.md); then speculative Jacobi decoding's model calls and time per token
# against one token a call (benchmarks/results/jacobi_cpu_DATE.md), and the judge's reading of its images
# beside sequential decoding's (benchmarks/results/jacobi_quality_cpu_DATE.md).
bench: setup
	$(BIN)/python benchmarks/decode_speed.py
	$(BIN)/python benchmarks/small_batch_linear.py
	$(BIN)/python benchmarks/tokenizer_speed.py
	$(BIN)/python benchmarks/token_surgery.py
	$(BIN)/python benchmarks/sample_speed.py
	$(BIN)/python benchmarks/jacobi_speed.py
	$(BIN)/python benchmarks/jacobi_quality.py

clean:
	rm -rf $(OUTPUTS) .cache .pytest_cache .ruff_cache
