"""The fault suite: end-to-end faults on the toy task, and the table of what they cost.

Every test here is marked `faults` (run them alone with `pytest -m faults`); they also run in
the normal test command. Each test adds rows to the fault table with `fault_table.add(...)`;
the table is printed at the end of the session: fault tried, survived, data lost (must be 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest


@dataclass
class FaultTable:
    rows: list[tuple[str, bool, int, str]] = field(default_factory=list)

    def add(self, fault: str, survived: bool, data_lost: int = 0, note: str = "") -> None:
        """`data_lost`: results, steps or files lost or wrong after the recovery (0 = none)."""
        self.rows.append((fault, bool(survived), int(data_lost), note))

    def render(self) -> str:
        width = max([len(r[0]) for r in self.rows] + [5])
        lines = [f"{'fault':<{width}}  survived  data lost  note", "-" * (width + 40)]
        for fault, survived, lost, note in self.rows:
            lines.append(f"{fault:<{width}}  {'yes' if survived else 'NO':<8}  {lost:>9}  {note}")
        tried, ok = len(self.rows), sum(r[1] for r in self.rows)
        lines.append(f"{tried} faults tried, {ok} survived, {sum(r[2] for r in self.rows)} data lost")
        return "\n".join(lines)


TABLE = FaultTable()
# The data of `trained_run` (on top of tests/conftest.py's tiny config).
TRAINED_DATA = ["data.toy.num_valid=8", "data.toy.num_test=8"]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/faults/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.faults)


@pytest.fixture
def fault_table() -> FaultTable:
    return TABLE


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if TABLE.rows:
        terminalreporter.section("fault table (tests/faults)")
        terminalreporter.write_line(TABLE.render())


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny run trained in this process (6 steps, validation at 3 and 6): its directory."""
    from nmtbench.train import train

    from ..conftest import TINY_TRANSFORMER, tiny_train_config

    root = tmp_path_factory.mktemp("trained")
    train(tiny_train_config(root, [*TINY_TRANSFORMER, *TRAINED_DATA, "test=false", "trainer.max_steps=6",
                                   "trainer.val_check_interval=3", "callbacks.bleu.max_len_b=4"]))
    return root / "run"
