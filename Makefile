# Two commands set everything up on a machine with Python 3.11:
#   make run   - create .venv, install, run the main job on the embedded default data
#   make test  - create or update .venv with every extra (nni, onnx, dev), run the whole test suite
#                on TEST_JOBS processes (pytest-xdist; TEST_JOBS=0 runs it in this one)
# Both reinstall only when setup.cfg or pyproject.toml changed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: run test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-all: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[nni,onnx,dev]'
	touch $@ $(VENV)/.installed

QUICKSTART := search_spaces/quickstart.yaml
RUN_NAME := quickstart

# A finished run is only re-checked; a stopped one continues where it stopped.
run: $(VENV)/.installed
	if [ -f runs/$(RUN_NAME)/manifest.json ]; then \
		$(BIN)/morf-search run $(QUICKSTART) --name $(RUN_NAME) --resume; \
	else \
		$(BIN)/morf-search run $(QUICKSTART) --name $(RUN_NAME); \
	fi

# Most of the suite's time is Ray, subprocesses and one-thread training, so two processes share
# 2 cores well; a test module stays on one process (--dist loadscope: its fixtures build once).
TEST_JOBS ?= 2

test: $(VENV)/.installed-all
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadscope

clean:
	rm -rf $(VENV) *.egg-info
