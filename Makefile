# Two commands do all the set-up on a fresh machine: `make train` and `make test`.
# Both create .venv with the standard venv module, put uv inside it (nothing is installed into the
# user's own Python, which may be externally managed, PEP 668) and install exactly the versions of
# uv.lock (`uv sync --locked` fails when the lock is stale: update it with `make lock`). uv ignores the
# machine's pip config (which offers a CPU-only torch that PyPI's torchvision cannot import against)
# and takes PyPI's torch + torchvision pair. Bytecode is compiled at install: with
# PYTHONDONTWRITEBYTECODE set, every import would otherwise recompile (33 s vs 9 s to import).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
SOURCES := lesionseg tests setup.py

export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE ?= offline
export HYDRA_FULL_ERROR ?= 0
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: setup train test test-fast lint lock bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml uv.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@test -x $(UV) || { $(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip --default-pip >/dev/null; \
		$(PY) -m pip install --quiet --disable-pip-version-check uv; }
	$(UV) sync --locked --quiet --compile-bytecode --python $(PY) --extra all --extra dev
	$(PY) -c "import torch, torchvision, timm, segmentation_models_pytorch; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	@touch $(STAMP)

train: $(STAMP)
	$(PY) -m lesionseg.train $(ARGS)

# The gate: lint, format and types (mypy's strictness is in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)
	$(VENV)/bin/mypy lesionseg

# What CI runs: the gate, then every test. One torch thread per xdist worker: two workers x two
# threads on two cores thrash.
test: lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadgroup $(ARGS)

# The developer's loop: everything but the end-to-end runs (marked slow).
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadgroup -m "not slow" $(ARGS)

# Re-resolve uv.lock after changing dependencies in pyproject.toml (commit both).
lock: $(STAMP)
	$(UV) lock

bench: $(STAMP)
	$(PY) -m lesionseg.bench models
	$(PY) -m lesionseg.bench data

clean:
	rm -rf $(VENV) .pytest_cache build dist
