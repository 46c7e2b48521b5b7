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

# The embedded broker, 3 party processes and the withdrawal worker: a 2-of-3 keygen, a wallet
# policy, a batch of ETH/BTC withdrawals (each signed one verified), then a clean shutdown. Default (3072-bit) level.
demo: $(STAMP)
	$(BIN)/conclave demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/conclave bench

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
