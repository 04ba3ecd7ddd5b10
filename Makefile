# btxrd: the project's commands. `make help` lists them.
SHELL := /bin/bash
PYTHON_BOOT ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DATA ?= data/demo
DEMO_N ?= 480
MLFLOW_PORT ?= 5000

.PHONY: help venv postgres slurm-packages slurm test test-integration demo demo-data showcase autoencoders evidence bench gpu-wheels gpu-check mlflow-server clean clean-all

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# A new .venv takes about 6.5 GB (torch with its CUDA libraries): say so at once rather than
# let pip fail halfway with "No space left on device".
VENV_NEEDS_MB := 7000

$(VENV)/.installed: pyproject.toml
	@free_mb=$$(df -Pk . | awk 'NR == 2 {print int($$4 / 1024)}'); \
	if [ ! -d $(VENV)/lib ] && [ "$$free_mb" -lt $(VENV_NEEDS_MB) ]; then \
	  echo "error: a new $(VENV) needs about $(VENV_NEEDS_MB) MB; $$free_mb MB free in $(CURDIR)" >&2; exit 1; fi
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed  ## create or update .venv with the project and its dev tools

test: venv  ## run the linter, the formatter's check and the test suite
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

# Debian's packages are installed when missing: as root directly, else through sudo.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_INSTALL := $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq

# PostgreSQL's server binaries (Debian's postgresql package).
POSTGRES_INITDB := $(firstword $(shell command -v initdb) $(wildcard /usr/lib/postgresql/*/bin/initdb))

postgres:
	@if [ -z "$(POSTGRES_INITDB)" ]; then echo "installing PostgreSQL (Debian package postgresql)"; \
	  $(APT_INSTALL) postgresql; fi

# A local Slurm cluster: slurmctld and slurmd, slurmdbd with MariaDB for job accounting, munge.
SLURM_DAEMONS := slurmctld slurmd slurmdbd munged mariadbd

slurm-packages:
	@for daemon in $(SLURM_DAEMONS); do command -v $$daemon >/dev/null || test -x /usr/sbin/$$daemon || missing=1; done; \
	if [ -n "$$missing" ]; then echo "installing Slurm, slurmdbd, munge, MariaDB (Debian packages)"; \
	  $(APT_INSTALL) slurm-wlm slurmdbd munge mariadb-server; fi

slurm: venv slurm-packages  ## a Slurm cluster on this machine (loopback, .slurm/) to try hydra/launcher=slurm; Ctrl-C stops it
	$(PY) -m btxrd.runtime.slurm --dir .slurm

test-integration: venv postgres slurm-packages  ## servers (PostgreSQL + MLflow, a real Slurm cluster), submitit and Optuna sweeps, faults injected
	$(PY) -m pytest -m integration

gpu-wheels: venv  ## (here) what a GPU machine lacks (hydra, MLflow, ...), as wheels in .whl/ for make gpu-check
	$(PY) -m btxrd.bench.gpucheck wheels .whl

# On a GPU machine there is no .venv: its python3 holds torch and timm, the rest comes from .whl/.
GPU_PY ?= python3
GPU_SITE ?= /tmp/btxrd-site
GPU_CHECK_ARGS ?=

gpu-check:  ## (on a GPU machine, ~8 min) the suite on CUDA, the GPU benchmark, a real-size 12-run grid -> bench/gpu_check.json; GPU_CHECK_ARGS=--dry-run rehearses it here
	@$(GPU_PY) -c "import hydra, mlflow, openpyxl, pydicom, imagehash" 2>/dev/null || { \
	  test -d .whl || { echo "error: hydra/MLflow missing and no .whl/ (make gpu-wheels, where a registry answers)" >&2; exit 2; }; \
	  $(GPU_PY) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $(GPU_SITE) .whl/*.whl; }
	PYTHONPATH=$(GPU_SITE):$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PY) -m btxrd.bench.gpucheck run $(GPU_CHECK_ARGS)

mlflow-server: venv postgres  ## a shared MLflow server on 127.0.0.1:5000 (PostgreSQL store in .mlflow-server/)
	$(PY) -m btxrd.tracking.server --dir .mlflow-server --port $(MLFLOW_PORT)

# SYNTHETIC.txt is written last: a dataset without it was cut short, or made before runs said they were synthetic
$(DEMO_DATA)/SYNTHETIC.txt: | venv
	$(PY) -m btxrd.data synth $(DEMO_DATA) --n $(DEMO_N) --seed 0 --size 192

demo-data: $(DEMO_DATA)/SYNTHETIC.txt  ## generate the synthetic demo dataset (data/demo)

demo: venv demo-data  ## generate the demo dataset, check it, train the 12-run grid into MLflow
	$(PY) -m btxrd.data check $(DEMO_DATA)
	$(PY) train.py -m experiment=demo data.root=$(abspath $(DEMO_DATA)) \
	  model=b0,b3,resnet50_cbam split=stratified,center annotations=on,off hydra.launcher.n_jobs=2
	@echo
	@echo "Done. The sweep's last line above gives the command that starts the MLflow UI (on 127.0.0.1) and"
	@echo "the address of this sweep's runs in it (model-training view); its report: multirun/<date>/<time>/sweep_report.md"

showcase: venv demo-data  ## annotation-guided training where Grad-CAM can show it: resnet50_cbam, 128 px, on/off x 3 seeds (~60 min on 2 cores)
	$(PY) train.py -m experiment=showcase data.root=$(abspath $(DEMO_DATA)) annotations=on,off seed=0,1,2 \
	  hydra.launcher.n_jobs=2

autoencoders: venv demo-data  ## autoencoder B vs C (CBAM after the block / on its branch), 128 px, 3 seeds (~60 min on 2 cores)
	$(PY) train.py -m experiment=ae_demo data.root=$(abspath $(DEMO_DATA)) \
	  model=ae_residual,ae_attention,ae_attention_residual seed=0,1,2 hydra.launcher.n_jobs=2

evidence: venv demo-data  ## regenerate one measured table of docs/ from its sweep: make evidence NAME=annotations-demo (NAME=list)
	$(PY) -m btxrd.report.evidence $(NAME) --data-root $(abspath $(DEMO_DATA))

bench: venv  ## benchmark the data path against the model (b0, 128 and 224 px); writes bench/bench.json and its tables in docs/
	$(PY) -m btxrd.bench

clean:  ## remove caches and run outputs (keeps mlflow.db and mlruns/)
	rm -rf outputs multirun checkpoints .cache .pytest_cache .ruff_cache

clean-all: clean  ## also delete the MLflow store (mlflow.db, mlruns/); asks first on a terminal
	@if [ -t 0 ]; then read -r -p "Delete mlflow.db and mlruns/ (all tracked runs)? [y/N] " answer; \
	  [ "$$answer" = y ] || [ "$$answer" = Y ] || { echo "kept"; exit 1; }; fi
	rm -rf mlflow.db mlflow.db-* mlruns
