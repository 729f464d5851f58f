# The README's two commands: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench install clean

$(VENV)/.installed: setup.cfg setup.py pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: an open torch requirement can pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q -c constraints.txt torch
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	# the Triton server the serving tests run, in its own folder (~/.cache/torchship/triton), once
	$(BIN)/torchship serve --setup --if-missing
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/torchship demo

# Two workers (the machines we run on have 2 cores); the tests marked `alone` (most of the memory, or a measure
# of idle CPU) run after them, one at a time, so the suite stays under 8 GB.
test: $(VENV)/.installed
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder -m "not alone"
	$(BIN)/python -m pytest -m alone

bench: $(VENV)/.installed
	$(BIN)/python scripts/benchmark.py

clean:
	rm -rf $(VENV) torchship-demo *.egg-info
