# Two commands are all a user needs: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO    ?= /tmp/nearsort-demo

.PHONY: install test demo bench peers clean chromium

install: $(STAMP)

# compileall: the editable install's bytecode, as pip writes it for an installed package (where
# PYTHONDONTWRITEBYTECODE is set, Python would compile every nearsort module again at each command's
# start: ~0.15 s of every CLI call here).
# --no-cache-dir: torch's CUDA build is ~5.5 GB installed; a cached copy of the wheels pip downloads would
# add to what the install needs on disk (a CI run once failed on a full disk during this step).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-cache-dir --upgrade pip
	$(BIN)/python -m pip install -q --no-cache-dir -e '.[test,ray]'
	$(BIN)/python -m compileall -q src >/dev/null
	touch $(STAMP)

test: install
	-@$(MAKE) --no-print-directory chromium
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/python -m compileall -q src >/dev/null
	$(BIN)/python -m pytest -q

# The report is tested in a real headless browser; tests skip with the reason where it cannot be installed.
chromium:
	@command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null 2>&1 || echo "chromium could not be installed: the browser tests (report, review) will be skipped"


demo: install
	rm -rf $(DEMO)
	$(BIN)/nearsort run samples/photos --out $(DEMO)/thumbs --apply
	$(BIN)/nearsort search "espresso" $(DEMO)/thumbs -k 3
	$(BIN)/nearsort dupes $(DEMO)/thumbs --limit 5
	$(BIN)/nearsort export $(DEMO)/thumbs --csv $(DEMO)/library.csv
	$(BIN)/nearsort report $(DEMO)/thumbs --out $(DEMO)/report.html
	@echo "Look in $(DEMO)/thumbs/p0001 (similar photos side by side), $(DEMO)/report.html and $(DEMO)/library.csv"
	@echo "Decide the duplicate groups one by one in your browser: $(BIN)/nearsort review $(DEMO)/thumbs"

bench: install
	$(BIN)/python -m pip install -q -e '.[test,ray,bench]'
	$(BIN)/python bench/ingest.py

# Peer tools for bench/peers.py: imagededup in .venv (the bench extra), fastdup in its own
# .venv-fastdup (it needs numpy < 2). Then: nice $(BIN)/python bench/peers.py BENCH...
peers: install
	$(BIN)/python -m pip install -q -e '.[test,ray,bench]'
	$(BIN)/python -c 'import sys; sys.path.insert(0, "bench"); import peers; peers.ensure_fastdup()'

clean:
	rm -rf $(VENV) .venv-fastdup build src/*.egg-info .pytest_cache
