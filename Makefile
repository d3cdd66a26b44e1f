# Two commands do all the set-up on a fresh machine: `make train` and `make test`.
# Both create .venv with the standard venv module, put uv inside it (nothing is installed into the
# user's own Python, which may be externally managed, PEP 668) and install the package with its dev
# extras. uv ignores the machine's pip config (which offers a CPU-only torch that PyPI's torchvision
# cannot import against) and takes PyPI's torch + torchvision pair. Bytecode is compiled at install:
# with PYTHONDONTWRITEBYTECODE set, every import would otherwise recompile (33 s vs 9 s to import).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed

export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE ?= offline
export HYDRA_FULL_ERROR ?= 0

.PHONY: setup train test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@test -x $(UV) || { $(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip --default-pip >/dev/null; \
		$(PY) -m pip install --quiet --disable-pip-version-check uv; }
	$(UV) pip install --quiet --compile-bytecode --python $(PY) -e ".[dev]"
	$(PY) -c "import torch, torchvision, timm, segmentation_models_pytorch; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	@touch $(STAMP)

train: $(STAMP)
	$(PY) -m lesionseg.train $(ARGS)

# One torch thread per xdist worker: two workers x two threads on two cores thrash.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadgroup $(ARGS)

bench: $(STAMP)
	$(PY) -m lesionseg.bench models
	$(PY) -m lesionseg.bench data

clean:
	rm -rf $(VENV) .pytest_cache
