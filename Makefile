# The two commands of the README: `make book` builds the site into _build/html, `make test` runs every test.
# Each creates .venv on first use and installs what it needs.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Trained models are cached inside the checkout, so the test run warms the cache for the book build.
export GENLIB_CACHE ?= $(CURDIR)/.cache/genlib
export MPLBACKEND := Agg
export GENLIB_PROGRESS := static
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: book test unit notebooks site lint clean clean-cache venv

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[book,test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (genbook)" >/dev/null
	@touch $@

book: $(STAMP)
	$(BIN)/jupyter-book build . -W -n --keep-going

test: $(STAMP)
	$(BIN)/python -m pytest tests/unit book tests/site --nbval-lax -q -ra

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

lint: $(STAMP)
	$(BIN)/ruff check genlib tests benchmarks

clean:
	rm -rf _build

clean-cache:
	rm -rf .cache/genlib _build/.jupyter_cache
