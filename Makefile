# The two README commands:
#   make demo   set up, then run the main job on the bundled data (no download)
#   make test   set up, then run every test (what .ci/run does)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test clean

# a virtual environment with the package (editable) and its dev tools; redone when the requirements change
$(VENV)/.installed: settings.ini setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python -m qonstraint.augment digits figures/augment_samples.png

test: install
	PATH="$(abspath $(BIN)):$$PATH" bash tools/test.sh

clean:
	rm -rf $(VENV) *.egg-info _proc _docs
