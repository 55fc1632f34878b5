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

# the demo's experiment at a second site: 300 shifted phantoms (python -m dualstage.data.phantom --site
# shifted), frozen vs re-chosen gates; ends by comparing with docs/demo_external_summary.json
SITE := models/phantom_sites/site_b
.PHONY: demo demo-reference demo-external demo-external-reference test test-all bench bench-full lint clean-venv

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
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/commands/test_install.py
	touch $@

# the demo ends by comparing its summary with the committed reference (docs/demo_summary.json)
demo: $(BIN)/.installed
	$(BIN)/python -m dualstage run experiments/demo.yaml
	$(BIN)/python -m dualstage.report.readme compare models/demo/report/summary.json

# after a change that moves the answer: the fresh summary becomes the reference, README re-rendered
demo-reference: $(BIN)/.installed
	$(BIN)/python -m dualstage.report.readme accept models/demo/report/summary.json

demo-external: $(BIN)/.installed
	test -f $(SITE)/phantom_index.csv || $(BIN)/python -m dualstage.data.phantom --out $(SITE) --n 300 \
	  --size 448 --site shifted --seed 1 --lesion-contrast 2.5 --subtle-share 0.25 --workers 2 --quiet
	$(BIN)/python -m dualstage external --exp models/demo --data $(SITE) --set site_b --no-progress
	$(BIN)/python -m dualstage.report.readme compare --block demo-external models/demo/report/summary.json

demo-external-reference: $(BIN)/.installed
	$(BIN)/python -m dualstage.report.readme accept --block demo-external models/demo/report/summary.json

# a worker per core; a test file stays on one worker (its module fixtures are built once)
test: lint
	$(BIN)/python -m pytest -q -n auto --dist loadfile

test-all: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n auto --dist loadfile -m "slow or not slow"

# every benchmarks/bench_*.py (claims merged into benchmarks/results.json), then RESULTS.md from it
# every claim's script at a size that fits ~10 minutes on 2 cores (scale.py: bench-full)
QUICK_BENCH = $(filter-out benchmarks/bench_stage_two.py,$(wildcard benchmarks/bench_*.py))
bench: $(BIN)/.installed
	@set -e; for f in $(QUICK_BENCH); do echo "== $$f"; $(BIN)/python $$f; done
	$(BIN)/python benchmarks/bench_stage_two.py --compare-rows 600 --test-rows 2000 --measure-folds 1
	$(BIN)/python benchmarks/results_md.py

# the full-size runs (hours on 2 cores): all ten folds' tuning, and every step after stage one
# on 12,000 synthetic studies with 1024 px maps (peak memory per step)
bench-full: $(BIN)/.installed
	$(BIN)/python benchmarks/bench_stage_two.py --measure-folds 10
	$(BIN)/python benchmarks/scale.py --studies 12000 --size 1024
	$(BIN)/python benchmarks/results_md.py

# the formatter owns the layout: `ruff format dualstage tests benchmarks` before a commit
lint: $(BIN)/.installed
	$(BIN)/ruff check dualstage tests benchmarks
	$(BIN)/ruff format --check dualstage tests benchmarks

clean-venv:
	rm -rf $(VENV)
