# Every target creates .venv on first use; `make test` works from a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision first, pinned to the builds this workplace keeps on local disk
# (pip's find-links / extra index); a newer range would pull several GB of CUDA wheels.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONHASHSEED := 0

.PHONY: demo test test-all bench lint clean-venv

$(BIN)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	# venvs made before xgboost-cpu hold xgboost + nvidia-nccl-cu12, whose libnccl.so.2 overwrote
	# torch's: remove them before xgboost-cpu goes in, then restore torch's nvidia-nccl-cu13 file
	if $(BIN)/python -m pip show -q nvidia-nccl-cu12 >/dev/null 2>&1; then \
	  $(BIN)/python -m pip uninstall --quiet -y xgboost nvidia-nccl-cu12; \
	  nccl=$$($(BIN)/python -m pip freeze | grep -i '^nvidia-nccl-cu13=='); \
	  test -z "$$nccl" || $(BIN)/python -m pip install --quiet --force-reinstall --no-deps "$$nccl"; \
	fi
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# one NCCL: libnccl.so.2 must be the file torch's nvidia-nccl-cu13 installed (see README, Dependencies)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_install.py
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python -m dualstage run experiments/demo.yaml

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

test-all: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m "slow or not slow"

# every benchmarks/bench_*.py (claims merged into benchmarks/results.json), then RESULTS.md from it
bench: $(BIN)/.installed
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done
	$(BIN)/python benchmarks/results_md.py

lint: $(BIN)/.installed
	$(BIN)/ruff check dualstage tests benchmarks

clean-venv:
	rm -rf $(VENV)
