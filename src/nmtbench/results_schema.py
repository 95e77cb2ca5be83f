"""results.json as data: its JSON Schema, reading older 1.x files, validation and loading.

`ResultsCallback` writes the file (it never validates); readers call `load_results(path)`
(the report) or `validate_results(d)` (tests). docs/results_schema.md describes every key.

- `load_results` reads a file, checks its `schema_version` (another major version is a
  one-line error naming the file, the version and the fix), brings a 1.0 file up to 1.1
  (`upgrade`: the 1.1 keys added, from the 1.0 ones where they can be derived), and checks
  the null-reason rule. With `jsonschema` installed (the `dev` extra) it also validates
  against `results_schema.json`; without it, the version and null-reason checks still run.
- `validate_results` returns every problem as a list (empty = valid); it needs `jsonschema`.

Deliberately light: no torch or Lightning import, so the report loads quickly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import resources
from typing import Any

from nmtbench.errors import NmtbenchError

SCHEMA_VERSION = "1.1"
SCHEMA_MAJOR = 1
CURVE_METRICS = {"val/bleu": "bleu", "val/paper_bleu": "paper_bleu"}  # logged metric -> val_curve key
FRACTIONS_OF_BEST = (0.9, 0.95, 0.99)
_OLD = "not recorded (schema 1.0 file)"


class ResultsFileError(NmtbenchError, ValueError):
    """A results.json that cannot be read: the message names the file, the problem and the fix."""


@lru_cache(maxsize=1)
def results_schema() -> dict[str, Any]:
    """The JSON Schema of results.json (src/nmtbench/results_schema.json)."""
    text = resources.files("nmtbench").joinpath("results_schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def time_to_fraction_of_best(curve: Sequence[Mapping[str, Any]], metric: str = "val/bleu",
                             fractions: Sequence[float] = FRACTIONS_OF_BEST) -> list[dict[str, Any]]:
    """For each fraction f: the first `val_curve` point whose `metric` value is >= f x the
    run's best value of it: [{fraction, metric, threshold, step, hours, hours_excl_val,
    device_hours}]; empty when no point has a value of `metric`."""
    key = CURVE_METRICS[metric]
    points = [p for p in curve if p.get(key) is not None]
    if not points:
        return []
    best = max(p[key] for p in points)
    out = []
    for fraction in fractions:
        threshold = fraction * best
        hit = next(p for p in points if p[key] >= threshold)  # the best point itself qualifies
        out.append({"fraction": fraction, "metric": metric, "threshold": threshold, "step": hit["step"],
                    "hours": hit["hours"], "hours_excl_val": hit["hours_excl_val"],
                    "device_hours": hit.get("device_hours")})
    return out


def _major(version: Any) -> int | None:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


def version_problem(results: Mapping[str, Any]) -> str | None:
    """Why this nmtbench cannot read `results` (another major schema version), or None."""
    version = results.get("schema_version")
    if _major(version) == SCHEMA_MAJOR:
        return None
    found = "missing" if version is None else repr(version)
    writer = results.get("nmtbench_version", "unknown")
    return (f"schema_version {found} is not readable by this nmtbench (it reads {SCHEMA_MAJOR}.x, writes "
            f"{SCHEMA_VERSION}); fix: read it with the nmtbench that wrote it (nmtbench_version {writer}) "
            "or re-run the training to write a current results.json")


def upgrade(results: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a 1.x results dict with every 1.1 key (a 1.0 file: the new keys added, derived
    from the 1.0 ones where possible; `schema_version` keeps the file's own)."""
    r = dict(results)
    if str(r.get("schema_version")) != "1.0":
        return r
    reasons = dict(r.get("null_reasons") or {})

    def put(key: str, value: Any, reason: str) -> None:
        r[key] = value
        if value is None:
            reasons[key] = reason

    put("gpu_kernel_active_pct_mean", r.get("gpu_util_mean"), reasons.get("gpu_util_mean", _OLD))
    r["gpu_per_device"] = [{"kernel_active_pct_mean": d.get("util_mean"), **d} for d in r.get("gpu_per_device", [])]
    put("best_val_paper_bleu", None, _OLD)
    r["val_curve"] = [{"device_hours": None, "paper_bleu": None, **p} for p in r.get("val_curve", [])]
    r["time_to_bleu"] = [{"metric": "val/bleu", **t} for t in r.get("time_to_bleu", [])]
    r["time_to_fraction_of_best"] = time_to_fraction_of_best(r["val_curve"], "val/bleu")
    no_test = reasons.get("test_sacrebleu")
    for key in ("test_weights", "test_ckpt_path", "test_averaged_from"):
        put(key, None, no_test or _OLD)
    r["test_evaluations"] = []
    r["null_reasons"] = reasons
    return r


def null_reason_problems(results: Mapping[str, Any]) -> list[str]:
    """Every null top-level value has a non-empty reason, and no non-null value has one."""
    reasons = results.get("null_reasons")
    if not isinstance(reasons, dict):
        return ["$.null_reasons: missing or not an object"]
    problems = [f"$.{key}: null without a null_reasons entry"
                for key, value in results.items() if key != "null_reasons" and value is None and not reasons.get(key)]
    for key in reasons:
        if key not in results:
            problems.append(f"$.null_reasons.{key}: no such key")
        elif results[key] is not None:
            problems.append(f"$.null_reasons.{key}: the value is not null")
    return problems


def _schema_problems(results: Mapping[str, Any]) -> list[str]:
    from jsonschema import Draft202012Validator  # the dev extra

    problems: dict[str, None] = {}  # ordered set
    for error in sorted(Draft202012Validator(results_schema()).iter_errors(results), key=lambda e: list(e.path)):
        where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        if error.validator == "required":  # one line per missing key, named like the others
            problems.update({f"{where}.{key}: missing": None for key in error.validator_value
                             if key not in error.instance})
        else:
            problems[f"{where}: {error.message}"] = None
    return list(problems)


def validate_results(results: Any) -> list[str]:
    """Every problem of a results dict (empty list = a valid schema 1.x file).

    JSON Schema (through `jsonschema`: types, required keys, ranges, patterns) of the dict as
    `upgrade` makes it, plus the null-reason rule. Unknown keys are allowed (a newer 1.x minor
    version may add keys).
    """
    if not isinstance(results, dict):
        return [f"$: expected an object, got {type(results).__name__}"]
    problem = version_problem(results)
    if problem:
        return [f"$.schema_version: {problem}"]
    results = upgrade(results)
    return _schema_problems(results) + null_reason_problems(results)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read a results.json, upgraded to schema 1.1 (see the module docstring).

    Raises ResultsFileError (a ValueError) with a one-line message naming the file, the
    problem and the fix.
    """
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        raise ResultsFileError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
                               "fix: re-run the training or test that writes it") from None
    except ValueError as err:
        raise ResultsFileError(f"{path}: {err}; fix: re-run the training or test that writes it") from None
    if not isinstance(results, dict):
        raise ResultsFileError(f"{path}: not a results.json (a JSON {type(results).__name__}, not an object)")
    problem = version_problem(results)
    if problem:
        raise ResultsFileError(f"{path}: {problem}")
    results = upgrade(results)
    try:
        problems = _schema_problems(results)
    except ImportError:  # jsonschema is a dev dependency: check what needs no library
        problems = []
    problems += null_reason_problems(results)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ResultsFileError(f"{path}: not a valid results.json (schema {SCHEMA_VERSION}): "
                               f"{'; '.join(problems[:3])}{more}; fix: re-run the training or test that "
                               "writes it, or correct these keys")
    return results


__all__ = ["SCHEMA_VERSION", "SCHEMA_MAJOR", "ResultsFileError", "results_schema", "upgrade", "validate_results",
           "load_results", "null_reason_problems", "version_problem", "time_to_fraction_of_best",
           "CURVE_METRICS", "FRACTIONS_OF_BEST"]
