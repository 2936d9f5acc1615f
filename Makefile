# Two commands set everything up: `make demo` and `make test`. Both create .venv when it is missing.
# torch and torchvision are installed first, pinned, so that no later dependency pulls another build.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUTPUTS := outputs
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/.cache/torchinductor
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib

.PHONY: setup test lint format demo bench clean

$(BIN)/python:
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Until the apps exist: the embedded photo tokenizer on a photo it never saw in training.
demo: setup
	@mkdir -p $(OUTPUTS)
	$(BIN)/llamagen reconstruct --sample china --tokenizer photo-vq --out $(OUTPUTS)/demo_china.png
	@echo "The original and its reconstruction are side by side in $(CURDIR)/$(OUTPUTS)/demo_china.png"

# Decoding speed (GPT-B, random weights) against the original's loop and the memory-bandwidth bound:
# prints a table, writes benchmarks/results/decode_cpu.md and puts it in the README. About 20 minutes.
bench: setup
	$(BIN)/python benchmarks/decode_speed.py --readme

clean:
	rm -rf $(OUTPUTS) .cache .pytest_cache .ruff_cache
