"""The fault table: each fault tried, whether the run survived it, data lost (must be 0).

Tests add rows through the `fault_table` fixture (tests/faults/conftest.py). A row travels in
its test's report (`user_properties`), and tests/conftest.py gathers the reports' rows and
prints the table at the end of the session: the same table from one process as from the
pytest-xdist workers `make test` runs (a worker's own end-of-session output is not shown).
"""

from __future__ import annotations

ROW = "fault_table_row"


class FaultTable:
    """The rows one test adds, kept in its report's `user_properties`."""

    def __init__(self, properties: list) -> None:
        self.properties = properties

    def add(self, fault: str, survived: bool, data_lost: int = 0, note: str = "") -> None:
        """`data_lost`: results, steps or files lost or wrong after the recovery (0 = none)."""
        self.properties.append((ROW, (fault, bool(survived), int(data_lost), note)))


def rows_of(report) -> list[tuple[str, bool, int, str]]:
    """The rows a test added, from its teardown report (which carries all of them once)."""
    if report.when != "teardown":
        return []
    return [tuple(row) for key, row in getattr(report, "user_properties", ()) if key == ROW]


def render(rows: list[tuple[str, bool, int, str]]) -> str:
    width = max([len(r[0]) for r in rows] + [5])
    lines = [f"{'fault':<{width}}  survived  data lost  note", "-" * (width + 40)]
    for fault, survived, lost, note in rows:
        lines.append(f"{fault:<{width}}  {'yes' if survived else 'NO':<8}  {lost:>9}  {note}")
    tried, ok = len(rows), sum(r[1] for r in rows)
    lines.append(f"{tried} faults tried, {ok} survived, {sum(r[2] for r in rows)} data lost")
    return "\n".join(lines)
