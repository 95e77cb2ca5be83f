# nmtbench entry points. `make smoke` and `make test` install everything they need first.
PYTHON ?= python3
# pytest-xdist workers for `make test`: the suite is mostly single-threaded subprocess runs
# (tests set OMP_NUM_THREADS=1), so 2 workers on 2 cores take a little over half the serial time.
TEST_WORKERS ?= 2

.PHONY: setup smoke train test test-fast lint format lowest

setup:
	bash scripts/setup.sh

smoke: setup  ## install, then train the default tiny run (toy task, CPU, < 5 min)
	$(PYTHON) scripts/train.py experiment=smoke

test: setup  ## install, then lint and run the whole test suite on CPU
	$(PYTHON) -m ruff check .
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q -n $(TEST_WORKERS)

test-fast:  ## unit tests only, no install
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q -n $(TEST_WORKERS) tests/unit

lowest:  ## a fresh venv with every core dependency at its lower bound: unit tests + a short train()
	bash scripts/lowest.sh

lint:
	$(PYTHON) -m ruff check .

format:
	$(PYTHON) -m ruff format .
