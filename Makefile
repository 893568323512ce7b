# RIS edge-deployment pipeline. Start with `make demo` and `make test`; `make help` lists every target.
SHELL := /bin/bash
PYTHON3 ?= python3
# The venv lives in a cache folder keyed by the hash of the dependency pins, so fresh clones reuse it.
VENV ?= $(shell $(PYTHON3) tools/ensure_venv.py --print-path)
PY := $(VENV)/bin/python
CONFIG ?= configs/demo.yaml
DEVICE ?= x86-cpu
RUN_ARGS ?=
PYTEST_ARGS ?=
export PYTHONPATH := $(CURDIR)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
DEVICES := $(sort $(basename $(notdir $(wildcard configs/devices/*.yaml))))

ABLATION_ARGS ?=
BACKBONE_ARGS ?=
VARIANT ?=
PREFLIGHT_ARGS ?=

.PHONY: help setup venv-path demo bench report ablations backbones preflight robot-venvs test test-all lint status clean-runs stages devices $(DEVICES)

help:  ## list targets
	@grep -E '^[a-zA-Z0-9_.-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

setup:  ## create or refresh the project's virtual environment (idempotent; ~2 min on first use)
	@$(PYTHON3) tools/ensure_venv.py --venv "$(VENV)"

venv-path:  ## print the venv path
	@echo $(VENV)

demo: setup  ## the whole pipeline on the embedded default: x86 artifacts + report, the Jetson bundle, then the gate
	$(PY) -m pipeline run --config $(CONFIG) --device x86-cpu --stages report $(RUN_ARGS)
	$(PY) -m pipeline run --config $(CONFIG) --device jetson-orin-nano --stages bundle $(RUN_ARGS)
	@echo "report: runs/demo/devices/x86-cpu/report/report.html (and report.md)"
	@echo "Jetson bundle: runs/demo/devices/jetson-orin-nano/bundle/bundle.tar.gz"
	@sed -n '1,40p' runs/demo/devices/x86-cpu/report/report.md 2>/dev/null || true
	$(PY) -m pipeline run --config $(CONFIG) --device x86-cpu --stages gate $(RUN_ARGS)

bench: setup  ## latency of every artifact (interleaved p50/p90/p99, split graph, peak RSS): make bench DEVICE=x86-cpu
	$(PY) -m pipeline run --config $(CONFIG) --device "$(DEVICE)" --stages bench $(RUN_ARGS)

report: setup  ## validate + bench + report.md/.html/.json + Pareto plot, then the INT8 gate (exit 2 if over budget)
	$(PY) -m pipeline run --config $(CONFIG) --device "$(DEVICE)" --stages report,gate $(RUN_ARGS)

ablations: setup  ## train the model and its 3 ablations (2 seeds, same budget) -> runs/ablations/ablations.md
	$(PY) -m pipeline.ablations --config $(CONFIG) --seeds 0 1 $(ABLATION_ARGS)

backbones: setup  ## the backbone study: Swin from scratch, EfficientNet-Lite0/2, MobileNetV2 (2 seeds) -> runs/backbones/
	$(PY) -m pipeline.backbones --config configs/backbones.yaml --seeds 0 1 $(BACKBONE_ARGS)

preflight: setup  ## before training: paper+edge with random weights -> ONNX, Q/DQ, TRT op check, parity, time/RSS per step: make preflight DEVICE=jetson-orin-nano [VARIANT=edge]
	$(PY) -m pipeline preflight --device "$(DEVICE)" $(if $(VARIANT),--variant "$(VARIANT)") $(PREFLIGHT_ARGS)

robot-venvs:  ## the robot's Python 3.8 / 3.10 venvs with each JetPack's pins (cached; skipped with the reason offline)
	@$(PYTHON3) tools/robot_venvs.py

test: setup robot-venvs  ## fast test suite (slow tests excluded)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: setup robot-venvs  ## every test, slow ones included
	$(PY) -m pytest -q -m "not trt or trt" $(PYTEST_ARGS)

lint: setup  ## ruff
	$(PY) -m ruff check .

status: setup  ## show each stage of the demo run: done / stale / missing
	$(PY) -m pipeline status --config $(CONFIG) $(RUN_ARGS)

stages: setup  ## list the pipeline's stages
	$(PY) -m pipeline stages

clean-runs:  ## remove every run folder (runs/)
	rm -rf runs

devices:  ## list the device profiles; `make <device>` builds that device's artifacts and bundle
	@$(PY) -m pipeline devices

$(DEVICES): setup
	$(PY) -m pipeline run --config $(CONFIG) --device $@ $(RUN_ARGS)

device: setup  ## build one device's artifacts: make device DEVICE=jetson-orin-nano
	$(PY) -m pipeline run --config $(CONFIG) --device "$(DEVICE)" $(RUN_ARGS)

.DEFAULT:
	@echo "make: unknown target '$@'. Device targets: $(DEVICES). Other targets: make help" >&2; exit 2
