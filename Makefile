# Two commands are all a user needs: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO    ?= /tmp/nearsort-demo

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

demo: install
	rm -rf $(DEMO)
	$(BIN)/nearsort run samples/photos --out $(DEMO)/thumbs --apply
	$(BIN)/nearsort search "espresso" $(DEMO)/thumbs -k 3
	$(BIN)/nearsort export $(DEMO)/thumbs --csv $(DEMO)/library.csv
	@echo "Look in $(DEMO)/thumbs/p0001 (similar photos side by side) and $(DEMO)/library.csv"

bench: install
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
