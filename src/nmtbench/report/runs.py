"""Our runs as table rows: results.json (schema 1.x) -> Row, and the seeds of one setting
merged into one row.

A field a results.json does not have (a 1.0 file read for a 1.1 column) is None with a
null reason saying so, never an error. Two or more runs of the same experiment whose
configs (config.yaml) differ only in the seed and the run's own paths become one row:
means, the lowest-highest seed for the test BLEU, and every seed's curve in the plots.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from nmtbench.report.curves import curves_from_tensorboard
from nmtbench.report.describe import (
    describe_hardware,
    describe_model,
    describe_test_set,
    model_family,
)
from nmtbench.report.rows import FRACTIONS, ReportError, Row

log = logging.getLogger(__name__)

RESULTS_FILENAME = "results.json"
HELP = "pass run directories, results.json files or directories of runs (or --allow-missing to skip it)"


# ---------------------------------------------------------------------------- reading
def find_results(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """results.json files named by `paths`: a results.json, a run directory holding one, or a
    directory whose sub-directories hold them (e.g. runs/table_mini/). Order is preserved."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found.append(p)
        elif (p / RESULTS_FILENAME).is_file():
            found.append(p / RESULTS_FILENAME)
        elif p.is_dir():
            children = sorted(c / RESULTS_FILENAME for c in p.iterdir() if (c / RESULTS_FILENAME).is_file())
            if not children:
                raise ReportError(f"{p}: no {RESULTS_FILENAME} in it or in its sub-directories "
                                  f"(a run writes it at the end of fit); {HELP}")
            found.extend(children)
        else:
            raise ReportError(f"{p}: no such file or directory; {HELP}")
    return list(dict.fromkeys(found))


def read_results(path: Path) -> dict[str, Any]:
    """A results.json, validated and read as schema 1.x (nmtbench.results_schema.load_results);
    ReportError naming the file, the problem and the fix."""
    from nmtbench.results_schema import ResultsFileError, load_results

    try:
        return load_results(path)
    except OSError as exc:
        raise ReportError(f"{path}: cannot read it ({exc.strerror}); {HELP}") from exc
    except ResultsFileError as exc:
        raise ReportError(str(exc)) from exc


def run_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config.yaml (written by train.py), or {} when absent or unreadable."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        import yaml

        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except Exception as exc:  # a broken config.yaml costs its details, not the report
        log.warning("Could not read %s: %s", path, exc)
        return {}


# ---------------------------------------------------------------------------- one run
def _not_in_file(results: dict[str, Any], key: str) -> str:
    return (f"not in this results.json (schema {results.get('schema_version', '?')}; "
            f"`{key}` came with schema 1.1)")


def tested_evaluation(results: dict[str, Any]) -> dict[str, Any] | None:
    """The test evaluation the row shows: the averaged weights' when there is one, else the
    last one run (as the top-level test_* fields of schema 1.1)."""
    evaluations = results.get("test_evaluations") or []
    averaged = [e for e in evaluations if e.get("weights") == "averaged"]
    return (averaged or evaluations or [None])[-1]


def describe_weights(evaluation: dict[str, Any]) -> str:
    weights = evaluation.get("weights") or "?"
    if weights == "averaged" and evaluation.get("averaged_from"):
        return f"averaged ({len(evaluation['averaged_from'])} checkpoints)"
    return {"best": "best checkpoint", "last": "last checkpoint",
            "current": "weights at the end of fit"}.get(weights, weights)


def _test_fields(results: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Row test fields (BLEU, signatures, sentences, weights) and reasons for missing ones."""
    reasons = results.get("null_reasons") or {}
    evaluation = tested_evaluation(results)
    source = evaluation or {f: results.get(f"test_{f}") for f in
                            ("sacrebleu", "paper_bleu", "paper_bleu_signature", "num_sentences")}
    if evaluation is None:
        source["signature"] = results.get("test_sacrebleu_signature")
    out = {"sacrebleu": source.get("sacrebleu"), "sacrebleu_signature": source.get("signature"),
           "paper_bleu": source.get("paper_bleu"),
           "paper_bleu_signature": source.get("paper_bleu_signature"),
           "test_num_sentences": source.get("num_sentences"),
           "test_weights": describe_weights(evaluation) if evaluation else None}
    why: dict[str, str] = {}
    for attr, key in (("sacrebleu", "test_sacrebleu"), ("paper_bleu", "test_paper_bleu"),
                      ("test_num_sentences", "test_num_sentences")):
        why[attr] = reasons.get(key, "not in results.json")
    if "test_evaluations" not in results:
        why["test_weights"] = (_not_in_file(results, "test_evaluations") + "; train.py then tested "
                               "the best checkpoint by val/bleu when there was one")
    else:
        why["test_weights"] = reasons.get("test_weights", "no test evaluation in this run")
    return out, {k: v for k, v in why.items() if out[k] is None}


def _fraction_fields(results: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    out: dict[str, Any] = {f"time_to_{round(f * 100)}_hours": None for f in FRACTIONS}
    out["fraction_metric"] = None
    if "time_to_fraction_of_best" not in results:
        reason = _not_in_file(results, "time_to_fraction_of_best")
        return out, {k: reason for k in out if k != "fraction_metric"}
    entries = results.get("time_to_fraction_of_best") or []
    for entry in entries:
        for fraction in FRACTIONS:
            if abs(float(entry.get("fraction", -1)) - fraction) < 1e-6:
                out[f"time_to_{round(fraction * 100)}_hours"] = entry.get("hours")
                out["fraction_metric"] = out["fraction_metric"] or entry.get("metric")
    reason = ((results.get("null_reasons") or {}).get("time_to_fraction_of_best")
              or ("no validation recorded" if not entries else "not recorded for this fraction"))
    return out, {k: reason for k, v in out.items() if v is None and k != "fraction_metric"}


def _targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """time_to_bleu as [{target, metric, reached, of, hours}]; metric None in a 1.0 file."""
    return [{"target": e.get("target"), "metric": e.get("metric"), "reached": int(bool(e.get("reached"))),
             "of": 1, "hours": e.get("hours") if e.get("reached") else None}
            for e in results.get("time_to_bleu") or []]


def run_row(results: dict[str, Any], run_dir: Path, published: Sequence[Row],
            families: dict[str, str], use_tensorboard: bool = True) -> Row:
    """The table row of one of our runs."""
    config = run_config(run_dir)
    name = (results.get("experiment") or results.get("model_variant") or results.get("task_name")
            or run_dir.name)
    val_curve = list(results.get("val_curve") or [])
    loss_curve: list[tuple[float, float]] = []
    if use_tensorboard:
        tb_val, loss_curve = curves_from_tensorboard(run_dir)
        if not val_curve and tb_val:
            val_curve = tb_val
    test, test_reasons = _test_fields(results)
    fractions, fraction_reasons = _fraction_fields(results)
    seed = results.get("seed")
    row = Row(
        kind="ours", family=model_family(results, published, families), name=name,
        system=f"{name} (ours): {describe_model(results)}", source=f"ours: {run_dir}",
        num_parameters=results.get("num_parameters"), test_set=describe_test_set(results, config),
        best_val_bleu=results.get("best_val_bleu"), best_val_paper_bleu=results.get("best_val_paper_bleu"),
        time_to_targets=_targets(results),
        wall_clock_hours=results.get("train_hours"), gpu_hours=results.get("gpu_hours"),
        device_hours=results.get("device_hours"), hardware=describe_hardware(results),
        accelerator=results.get("accelerator"), gpu_util_mean=results.get("gpu_util_mean"),
        mfu=results.get("mfu"), tokens_per_sec=results.get("tokens_per_sec"),
        train_flops=results.get("train_flops"), steps=results.get("steps"),
        seeds=[] if seed is None else [seed], run_dir=str(run_dir),
        val_curve=val_curve, loss_curve=loss_curve, **test, **fractions,
    )
    reasons = results.get("null_reasons") or {}
    key_map = {"wall_clock_hours": "train_hours"}
    for attr in ("num_parameters", "wall_clock_hours", "gpu_hours", "gpu_util_mean", "mfu",
                 "tokens_per_sec", "best_val_bleu", "device_hours"):
        if getattr(row, attr) is None:
            row.null_reasons[attr] = reasons.get(key_map.get(attr, attr), "not in results.json")
    if row.best_val_paper_bleu is None:
        row.null_reasons["best_val_paper_bleu"] = (reasons.get("best_val_paper_bleu")
                                                   or _not_in_file(results, "best_val_paper_bleu"))
    if not row.time_to_targets:
        row.null_reasons["time_to_targets"] = "no BLEU targets configured (callbacks.wallclock)"
    if row.test_set is None:
        row.null_reasons["test_set"] = reasons.get("data_source", "unknown data source")
    row.null_reasons.update(test_reasons)
    row.null_reasons.update(fraction_reasons)
    return row


# ---------------------------------------------------------------------------- seeds
def setting_digest(config: dict[str, Any]) -> str | None:
    """sha256 of a run's resolved config without what differs between seeds of one setting:
    `seed`, `ckpt_path`, `paths` and the run directory inside other values (checkpoint
    directories, trainer.default_root_dir). None without a config.yaml."""
    if not config:
        return None
    output_dir = str((config.get("paths") or {}).get("output_dir") or "")
    payload = {k: v for k, v in config.items() if k not in ("paths", "seed", "ckpt_path")}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    if output_dir:
        text = text.replace(json.dumps(output_dir)[1:-1], "<run_dir>")
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


MEANS = ("test_num_sentences", "paper_bleu", "sacrebleu", "best_val_bleu", "best_val_paper_bleu",
         "time_to_90_hours", "time_to_95_hours", "time_to_99_hours", "wall_clock_hours", "gpu_hours",
         "device_hours", "gpu_util_mean", "mfu", "tokens_per_sec", "train_flops", "steps")
RANGES = ("paper_bleu", "sacrebleu")


def merge_seeds(runs: Sequence[Row]) -> Row:
    """One row for the seeds of one setting: means (over the seeds that have a value), the
    lowest-highest seed of the test BLEUs, every seed's row in `members` (for the plots)."""
    first = runs[0]
    merged = dataclasses.replace(
        first, members=list(runs), val_curve=[], loss_curve=[], notes=[],
        seeds=sorted(s for r in runs for s in r.seeds), run_dir="; ".join(r.run_dir or "" for r in runs),
        system=first.system.replace(f"{first.name} (ours)", f"{first.name} (ours, {len(runs)} seeds)"),
        source=f"ours: {len(runs)} runs", null_reasons={},
    )
    for attr in MEANS:
        values = [getattr(r, attr) for r in runs if getattr(r, attr) is not None]
        mean = statistics.fmean(values) if values else None
        if mean is not None and isinstance(getattr(first, attr), int):
            mean = round(mean)
        setattr(merged, attr, mean)
        if attr in RANGES and len(values) > 1:
            setattr(merged, f"{attr}_range", (min(values), max(values)))
        if values and len(values) < len(runs):
            merged.notes.append(f"{attr}: mean of the {len(values)} of {len(runs)} seeds that have it")
    weights = list(dict.fromkeys(r.test_weights for r in runs if r.test_weights))
    merged.test_weights = " / ".join(weights) or None
    merged.time_to_targets = _merge_targets(runs)
    merged.null_reasons = {k: v for k, v in first.null_reasons.items() if getattr(merged, k, None) in (None, [])}
    return merged


def _merge_targets(runs: Sequence[Row]) -> list[dict[str, Any]]:
    merged: dict[tuple, dict[str, Any]] = {}
    for run in runs:
        for t in run.time_to_targets:
            entry = merged.setdefault((t["target"], t["metric"]),
                                      {"target": t["target"], "metric": t["metric"], "reached": 0,
                                       "of": 0, "hours": []})
            entry["of"] += 1
            if t["reached"]:
                entry["reached"] += 1
                entry["hours"].append(t["hours"])
    for entry in merged.values():
        hours = [h for h in entry["hours"] if h is not None]
        entry["hours"] = statistics.fmean(hours) if hours else None
    return list(merged.values())


def load_runs(paths: Iterable[str | os.PathLike], published: Sequence[Row], families: dict[str, str],
              use_tensorboard: bool = True) -> list[Row]:
    """Rows of our runs from results.json files; the seeds of one setting as one row."""
    groups: dict[tuple, list[Row]] = {}
    for path in find_results(paths):
        row = run_row(read_results(path), path.parent, published, families, use_tensorboard)
        digest = setting_digest(run_config(path.parent))
        groups.setdefault((row.name, digest or str(path)), []).append(row)
    rows = [merge_seeds(g) if len(g) > 1 else g[0] for g in groups.values()]
    counts = Counter(r.name for r in rows)
    for row in rows:  # one experiment in two settings: tell them apart by their directory
        if counts[row.name] > 1:
            run_dir = Path((row.run_dir or "").split("; ")[0])
            tag = f"{row.name} [{run_dir.parent.name}/{run_dir.name}]"
            row.system = row.system.replace(f"{row.name} (ours", f"{tag} (ours")
            row.name = tag
    return rows


__all__ = ["RESULTS_FILENAME", "find_results", "load_runs", "merge_seeds", "read_results", "run_row",
           "setting_digest", "tested_evaluation"]
