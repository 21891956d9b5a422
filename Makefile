# Two commands do everything on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.xtc-installed
RUN    ?= runs/demo/$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup demo quick test test-fast lab clean-notebooks

setup: $(STAMP)

# Idempotent: reinstalls only when pyproject.toml changes. torch/torchvision are pinned
# to the releases that install from local files (a plain `pip install torch` downloads GBs).
# TORCH=cpu takes the same pins from PyTorch's CPU-only wheel index instead (~1 GB of torch
# instead of ~5 GB with the CUDA libraries; for laptops without a GPU; NOT tested on CI,
# whose machines reach only the CUDA build): `make setup TORCH=cpu` on a fresh checkout.
TORCH ?= default
TORCH_INDEX := $(if $(filter cpu,$(TORCH)),--index-url https://download.pytorch.org/whl/cpu)
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_INDEX) torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $(STAMP)

# The main job: the papermill report on the embedded synthetic city -> reports/index.html
demo: setup
	$(PY) -m xtc report --preset demo

# Train the quick synthetic config alone (2-core CPU: ~1.5 min with native bf16, ~2.5 min without) -> runs/demo/<timestamp>/
quick: setup
	$(PY) -m xtc train --config configs/synthetic-quick.yaml --out $(RUN)

# Lint (ruff, line length 100), then unit, integration and browser tests, every notebook
# under nbval with its defaults, and every docstring example in xtc/.
test: setup
	$(PY) -m ruff check .
	MPLBACKEND=agg $(PY) -m pytest -q --nbval-lax --doctest-modules tests notebooks xtc

test-fast: setup
	$(PY) -m ruff check .
	MPLBACKEND=agg $(PY) -m pytest -q -m "not slow" --doctest-modules tests xtc

clean-notebooks: setup
	$(PY) tools/clean_notebooks.py

# The lab token is drawn once (simply expanded, only when lab is a goal; TOKEN=... picks
# your own) and reaches Jupyter through the environment: Jupyter Server reads JUPYTER_TOKEN
# as --IdentityProvider.token, and a token on a command line would show in `ps`.
ifneq ($(filter lab,$(MAKECMDGOALS)),)
TOKEN := $(or $(TOKEN),$(shell $(PYTHON) -c 'import secrets; print(secrets.token_hex(16))'))
endif

lab: export JUPYTER_TOKEN = $(TOKEN)
lab: setup
	@echo "JupyterLab on http://127.0.0.1:8888/lab?token=$$JUPYTER_TOKEN"
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 --port 8888 --no-browser --notebook-dir . \
		$(if $(filter 0,$(shell id -u)),--allow-root)

# The explorer as a Voilà app (code cells hidden) on http://127.0.0.1:8866 behind a token:
# `make app`, or `make app APP_RUN=runs/demo/X` to open on that run (else the runs found under
# runs/ and reports/, else configs/quickstart.yaml trained on first view). TOKEN=... picks the token, else `xtc app`
# draws one and prints the URL; it reaches Voilà through JUPYTER_TOKEN, never a command line.
.PHONY: app
app: export JUPYTER_TOKEN = $(or $(TOKEN),$(JUPYTER_TOKEN))
app: setup
	$(PY) -m xtc app $(if $(APP_RUN),--run $(APP_RUN)) $(if $(PORT),--port $(PORT))
