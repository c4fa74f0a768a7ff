# One command each: `make demo` (train, evaluate and recommend on MovieLens-1M) and
# `make test`. Both create .venv/ inside the checkout and install everything it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_RUN ?= runs/demo-ml-1m-sasrec
DEMO_EPOCHS ?= 20

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

# torch is installed first and pinned only here: 2.13.0 is the CPU build this machine
# has locally. The package itself asks for any recent torch, so a user's CUDA build stays.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,content,serve,bench]'
	touch $@

demo: install
	$(BIN)/modrec datasets
	$(BIN)/modrec train -d ml-1m -m sasrec --epochs $(DEMO_EPOCHS) --out $(DEMO_RUN) --resume
	$(BIN)/modrec recommend $(DEMO_RUN) --user 1 -k 10

test: lint
	$(BIN)/python -m pytest tests

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache
