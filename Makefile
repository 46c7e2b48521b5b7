# `make demo` and `make test` create .venv and install the project when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# A 2-of-3 ceremony at the default (3072-bit) level, every party in this process.
demo: $(STAMP)
	$(BIN)/conclave simulate --parties 3 --threshold 2 --signers 1,3 --message "conclave demo withdrawal"

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/conclave bench

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
