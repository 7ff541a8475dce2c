# The two commands of this project: `make demo` and `make test`.
# Both create (or reuse) .venv and install what is missing; re-running is fast when
# pyproject.toml has not changed (a stamp file records the last install).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# uv resolves and installs the ~2 GB of torch/CUDA wheels several times faster than pip;
	@# plain pip is the fallback when uv cannot be installed.
	@$(BIN)/python -m pip install -q --disable-pip-version-check uv 2>/dev/null || true
	@if test -x $(BIN)/uv; then \
	  $(BIN)/uv pip install -q --python $(BIN)/python -e '.[test]'; \
	else \
	  $(BIN)/python -m pip install -q -e '.[test]'; \
	fi
	@touch $(STAMP)

demo: install
	$(BIN)/inat-tune demo

# Every test, slow ones included (CI runs this).
test: install
	$(BIN)/python -m pytest -q

# Inner-loop: skip the tests marked slow.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# The GPU-hour check: gpu-marked tests + bench at 224 px with the machine's own python/torch
# (PYTHON=...), installing nothing; a CPU rehearsal at tiny sizes where there is no CUDA.
gpu-check:
	PYTHON=$${PYTHON:-$$(test -x $(BIN)/python && echo $(BIN)/python || echo python3)} scripts/gpu_check.sh

clean:
	rm -rf $(VENV) .pytest_cache
