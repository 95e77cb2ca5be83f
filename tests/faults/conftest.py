"""The fault suite: end-to-end faults on the toy task, and the table of what they cost.

Every test here is marked `faults` (run them alone with `pytest -m faults`); they also run in
the normal test command. Each test adds rows to the fault table with `fault_table.add(...)`;
tests/conftest.py prints the table at the end of the session: fault tried, survived, data
lost (must be 0); tests/faults/table.py says how the rows get there.
"""

from __future__ import annotations

import pytest

from .table import FaultTable

# The data of `trained_run` (on top of tests/conftest.py's tiny config).
TRAINED_DATA = ["data.toy.num_valid=8", "data.toy.num_test=8"]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/faults/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.faults)


@pytest.fixture
def fault_table(request) -> FaultTable:
    """Rows for the table printed at the end of the session (tests/faults/table.py)."""
    return FaultTable(request.node.user_properties)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny run trained in this process (6 steps, validation at 3 and 6): its directory."""
    from nmtbench.train import train

    from ..conftest import TINY_TRANSFORMER, tiny_train_config

    root = tmp_path_factory.mktemp("trained")
    train(tiny_train_config(root, [*TINY_TRANSFORMER, *TRAINED_DATA, "test=false", "trainer.max_steps=6",
                                   "trainer.val_check_interval=3", "callbacks.bleu.max_len_b=4"]))
    return root / "run"
