"""Reading results.json: a schema 1.0 file (written by nmtbench before 1.1) loads as 1.1, other
major versions and broken files are one-line errors naming the file and the fix (also through
report.py), and loading works without `jsonschema` installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nmtbench.results_schema import (
    SCHEMA_VERSION,
    ResultsFileError,
    load_results,
    results_schema,
    upgrade,
    validate_results,
)

ROOT = Path(__file__).resolve().parents[2]
V1_0 = ROOT / "tests" / "data" / "results_schema_1.0.json"  # written by nmtbench's 1.0 ResultsCallback


def old_results() -> dict:
    return json.loads(V1_0.read_text(encoding="utf-8"))


def write(tmp_path: Path, results: dict, name: str = "results.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(results), encoding="utf-8")
    return path


def test_schema_1_0_file_loads_as_1_1():
    old = old_results()
    assert old["schema_version"] == "1.0" and "test_evaluations" not in old
    r = load_results(V1_0)
    assert r["schema_version"] == "1.0"  # the file's own version is kept
    assert set(results_schema()["required"]) <= set(r)
    assert validate_results(old) == []
    # renamed: read from the 1.0 name
    assert r["gpu_kernel_active_pct_mean"] is None
    assert r["null_reasons"]["gpu_kernel_active_pct_mean"] == old["null_reasons"]["gpu_util_mean"]
    # derived from the 1.0 curve; not recorded in 1.0
    assert [f["fraction"] for f in r["time_to_fraction_of_best"]] == [0.9, 0.95, 0.99]
    assert r["time_to_fraction_of_best"][0]["step"] == old["val_curve"][0]["step"]
    assert all(t["metric"] == "val/bleu" for t in r["time_to_bleu"])
    assert all(p["paper_bleu"] is None for p in r["val_curve"])
    assert r["test_evaluations"] == [] and r["test_weights"] is None
    assert "schema 1.0" in r["null_reasons"]["test_weights"]
    assert r["test_sacrebleu"] == old["test_sacrebleu"]


def test_upgrade_renames_per_device_utilisation():
    old = dict(old_results(), gpu_util_mean=71.0,
               gpu_per_device=[{"rank": 0, "name": "NVIDIA H100 80GB HBM3", "util_mean": 71.0, "mem_gb_mean": 5.0,
                                "mem_gb_max": 6.0, "power_w_mean": 300.0, "num_samples": 10}])
    old["null_reasons"] = {k: v for k, v in old["null_reasons"].items() if k != "gpu_util_mean"}
    r = upgrade(old)
    assert r["gpu_kernel_active_pct_mean"] == 71.0 and "gpu_kernel_active_pct_mean" not in r["null_reasons"]
    assert r["gpu_per_device"][0]["kernel_active_pct_mean"] == 71.0
    assert validate_results(old) == []
    assert upgrade(dict(old, schema_version=SCHEMA_VERSION)) == dict(old, schema_version=SCHEMA_VERSION)


def one_line_error(path: Path) -> str:
    with pytest.raises(ResultsFileError) as info:
        load_results(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "fix:" in message
    return message


def test_other_major_version_is_a_one_line_error(tmp_path):
    path = write(tmp_path, dict(old_results(), schema_version="2.0", nmtbench_version="0.9.0"))
    message = one_line_error(path)
    assert "schema_version '2.0'" in message and "1.x" in message and "0.9.0" in message
    assert any("schema_version" in p for p in validate_results(json.loads(path.read_text())))
    message = one_line_error(write(tmp_path, {k: v for k, v in old_results().items() if k != "schema_version"}))
    assert "schema_version missing" in message


def test_broken_files_are_one_line_errors(tmp_path):
    bad_json = tmp_path / "broken.json"
    bad_json.write_text('{"schema_version": "1.1",\n "steps": }', encoding="utf-8")
    assert "line 2" in one_line_error(bad_json)
    invalid = write(tmp_path, dict(old_results(), steps="many"), "invalid.json")
    assert "$.steps" in one_line_error(invalid)
    no_reason = write(tmp_path, dict(old_results(), steps=None), "no_reason.json")
    assert "null without a null_reasons entry" in one_line_error(no_reason)


def test_loads_without_jsonschema(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # `import jsonschema` raises ImportError
    with pytest.raises(ImportError):
        validate_results(old_results())
    r = load_results(V1_0)
    assert r["test_evaluations"] == []
    assert "2.0" in one_line_error(write(tmp_path, dict(old_results(), schema_version="2.0")))
    # the null-reason rule needs no library
    assert "null_reasons" in one_line_error(write(tmp_path, dict(old_results(), steps=None), "n.json"))


def test_report_script_names_the_file_version_and_fix(tmp_path):
    """issue 13 item 6: a results.json of another schema major version given to report.py."""
    run = tmp_path / "run"
    run.mkdir()
    path = write(run, dict(old_results(), schema_version="2.0"))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "report.py"), str(run), "--out",
                           str(tmp_path / "out"), "--no-tensorboard"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert str(path) in lines[0] and "'2.0'" in lines[0] and "fix:" in lines[0]
