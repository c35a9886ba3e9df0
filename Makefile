# Quick start: `make pipeline` (install + run everything on the embedded data), `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: install browser pipeline test benchmark catalog notebooks ui clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	# Bytecode now, not at every start: where PYTHONDONTWRITEBYTECODE is set (containers, CI) each
	# stage would otherwise recompile mlflow, scikit-learn, pandas... from source (half the score job at 1M).
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed

pipeline: install
	dvc repro
	dvc metrics show

# Debian's Chromium, for the test that renders the MLflow UI headless.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }

test: install browser
	$(BIN)/python -m pytest

catalog: install
	churnlens catalog --output docs/features.md

ui: install
	churnlens ui

# The review notebooks executed against this project's pipeline outputs and MLflow store, saved
# (with outputs) as notebooks and HTML under reports/notebooks/; the sources stay output-free.
# CHURNLENS_MODEL_VERSION=<n> reviews that version instead of the champion.
notebooks: install
	jupyter nbconvert --to notebook --execute --output-dir reports/notebooks notebooks/*.ipynb
	jupyter nbconvert --to html --output-dir reports/notebooks reports/notebooks/*.ipynb

clean:
	rm -rf data/raw data/truth data/canonical data/quarantine data/features data/scores models/churn_model reports
