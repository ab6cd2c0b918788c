# The two commands of the README: `make book` builds the site into _build/html, `make test` runs every test.
# Each creates .venv on first use and installs what it needs.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Trained models are cached inside the checkout, so the test run warms the cache for the book build.
export GENLIB_CACHE ?= $(CURDIR)/.cache/genlib
export GENLIB_PROGRESS := static
export PYDEVD_DISABLE_FILE_VALIDATION := 1
# Both cores of the 2-core machines the budgets are set for (measured: 1.1-2x faster per training step than one
# thread for every model of the book when nothing else runs); override freely.
export OMP_NUM_THREADS ?= 2

# MathJax is served from the built site (math renders offline, no CDN): the npm package, pinned.
MATHJAX_VERSION := 3.2.2
MATHJAX := .cache/mathjax/mathjax/tex-chtml.js
# The browser check drives Debian's chromium (installed here when absent and running as root).
CHROMIUM ?= /usr/bin/chromium

.PHONY: book test unit notebooks site lint clean clean-cache venv mathjax chromium

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[book,test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (genbook)" >/dev/null
	@touch $@

mathjax: $(MATHJAX)

$(MATHJAX):
	@command -v npm >/dev/null || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q npm)
	@command -v npm >/dev/null || { echo "npm is needed once to fetch MathJax (apt-get install -y npm)"; exit 1; }
	rm -rf .cache/mathjax
	npm install --silent --no-audit --no-fund --prefix .cache/mathjax/npm mathjax@$(MATHJAX_VERSION)
	cp -r .cache/mathjax/npm/node_modules/mathjax/es5 .cache/mathjax/mathjax
	rm -rf .cache/mathjax/npm
	@test -f $@

chromium:
	@if [ ! -x $(CHROMIUM) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; fi

book: $(STAMP) $(MATHJAX)
	$(BIN)/jupyter-book build . -W -n --keep-going

test: $(STAMP) $(MATHJAX) chromium
	$(BIN)/python -m pytest tests/unit book tests/package tests/site --nbval-lax -q -ra

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

lint: $(STAMP)
	$(BIN)/ruff check genlib tests benchmarks

clean:
	rm -rf _build

clean-cache:
	rm -rf .cache/genlib _build/.jupyter_cache
