# specdecode: install, test and demo from a fresh clone.
#
#   make install   create .venv (CPU torch first, then specdecode with its extras)
#   make test      pull the small zoo model, run the test suite
#   make demo      pull the Qwen2.5-Coder 1.5B/0.5B pair, compare plain vs speculative decoding
#   make clean     remove .venv and caches (the converted zoo models in ~/.cache/specdecode stay)
#
# torch is installed FIRST and pinned, so the later `pip install -e .` finds it satisfied and never
# pulls a CUDA build. Override for another platform, e.g.
#   make install TORCH_SPEC="torch==2.13.0" TORCH_PIP_ARGS="--index-url <a CPU wheel index>"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
EXTRAS ?= dev,rag,vision

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

DEMO_TARGET := qwen2.5-coder-1.5b-instruct
DEMO_DRAFTER := qwen2.5-coder-0.5b-instruct
DEMO_CODE_PROMPT := Write a Python function that merges two sorted lists into one sorted list, with a docstring and two doctest examples.

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e ".[$(EXTRAS)]"
	touch $(STAMP)

test: install
	$(BIN)/specdecode models pull smollm2-135m-instruct --quiet
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/specdecode models pull $(DEMO_TARGET) --quiet
	$(BIN)/specdecode models pull $(DEMO_DRAFTER) --quiet
	@echo
	@echo "== prompt lookup on a summary (scripts/demo_prompt.txt) =="
	$(BIN)/specdecode generate --model $(DEMO_TARGET) --drafter lookup --compare \
		--max-new-tokens 160 - < scripts/demo_prompt.txt
	@echo
	@echo "== a 0.5B model drafting for the 1.5B on a coding prompt =="
	$(BIN)/specdecode generate --model $(DEMO_TARGET) --drafter model:$(DEMO_DRAFTER) --compare \
		--max-new-tokens 160 "$(DEMO_CODE_PROMPT)"

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
