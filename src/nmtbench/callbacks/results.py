"""ResultsCallback: the per-run `results.json`, and its validator.

At the end of fit and again at the end of test, rank zero writes `<output_dir>/results.json`
(schema: docs/results_schema.md and `nmtbench/results_schema.json`). The numbers come from
the other callbacks of the run (found by type in `trainer.callbacks`): WallClockCallback,
ThroughputCallback, GpuStatsCallback and BleuCallback. Every field is always present; a
field that cannot be measured is null and `null_reasons[field]` says why.

A process that only tests (no fit) and finds an existing results.json in its output
directory updates that file's test fields instead of replacing it.

`validate_results(d)` checks a results dict against the JSON Schema file with a small
built-in validator (no `jsonschema` dependency) plus the null-reason rule; the report script
uses `load_results(path)`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from nmtbench.flops import mfu

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1.0"
SCHEMA_MAJOR = 1
RESULTS_FILENAME = "results.json"
HOUR = 3600.0

TEST_FIELDS = {  # results.json key -> BleuCallback.test_scores key
    "test_sacrebleu": "sacrebleu",
    "test_sacrebleu_signature": "signature",
    "test_paper_bleu": "paper_bleu",
    "test_paper_bleu_signature": "paper_bleu_signature",
    "test_chrf": "chrf",
    "test_chrf_signature": "chrf_signature",
    "test_beam_size": "beam_size",
    "test_length_penalty": "length_penalty",
    "test_num_sentences": "num_sentences",
}


# -- schema and validation ------------------------------------------------------------------
@lru_cache(maxsize=1)
def results_schema() -> dict[str, Any]:
    """The JSON Schema of results.json (src/nmtbench/results_schema.json)."""
    text = resources.files("nmtbench").joinpath("results_schema.json").read_text(encoding="utf-8")
    return json.loads(text)


_JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def _check(value: Any, schema: dict[str, Any], path: str, problems: list[str]) -> None:
    """Validate `value` against the subset of JSON Schema used by results_schema.json."""
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_JSON_TYPES[t](value) for t in types):
            problems.append(f"{path}: expected {' or '.join(types)}, got {type(value).__name__} {value!r:.60}")
            return
    if value is None:
        return
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{path}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{path}: {value} > maximum {schema['maximum']}")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        problems.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{path}[{i}]", problems)
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                problems.append(f"{path}.{key}: missing")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                _check(item, props[key], f"{path}.{key}", problems)
            elif isinstance(extra, dict):
                _check(item, extra, f"{path}.{key}", problems)
            elif extra is False:
                problems.append(f"{path}.{key}: unexpected key")


def validate_results(results: dict[str, Any]) -> list[str]:
    """Problems of a results dict (empty list = valid schema 1.x file).

    Checks the JSON Schema (types, required keys, ranges, patterns) and the convention that
    every null top-level value has a non-empty `null_reasons` entry and no non-null value has one.
    Unknown top-level keys are allowed (a newer 1.x minor version may add keys).
    """
    problems: list[str] = []
    if not isinstance(results, dict):
        return [f"$: expected an object, got {type(results).__name__}"]
    _check(results, results_schema(), "$", problems)
    reasons = results.get("null_reasons")
    if isinstance(reasons, dict):
        for key, value in results.items():
            if key == "null_reasons":
                continue
            if value is None and not reasons.get(key):
                problems.append(f"$.{key}: null without a null_reasons entry")
        for key in reasons:
            if key in results and results[key] is not None:
                problems.append(f"$.null_reasons.{key}: the value is not null")
            elif key not in results:
                problems.append(f"$.null_reasons.{key}: no such key")
    return problems


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a results.json; raise ValueError naming the file and every problem."""
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    problems = validate_results(results)
    if problems:
        raise ValueError(f"{path} is not a valid results.json (schema {SCHEMA_VERSION}):\n  " + "\n  ".join(problems))
    return results


# -- helpers --------------------------------------------------------------------------------
def config_digest(cfg: dict[str, Any]) -> str:
    """"sha256:<hex>" of the config as canonical JSON, without the run-specific `paths` section."""
    payload = {k: v for k, v in cfg.items() if k != "paths"}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _hydra_choices() -> dict[str, Any]:
    """Hydra's config-group choices of this run ({} when not launched through Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return dict(HydraConfig.get().runtime.choices)
    except Exception:
        return {}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def _describe_data(data: dict[str, Any]) -> str | None:
    source = data.get("source")
    if source is None:
        return None
    pair = f"{data.get('src_lang', '?')}->{data.get('tgt_lang', '?')}"
    if source == "toy":
        toy = data.get("toy") or {}
        what = f"toy (generated, {toy.get('num_train', '?')} train pairs)"
    elif source == "files":
        what = f"files ({data.get('dir')}/{data.get('train_prefix', 'train')}.*)"
    elif source == "wmt14":
        what = f"wmt14 ({data.get('hf_dataset')} {data.get('hf_config')})"
    else:
        what = str(source)
    return f"{what} {pair}, joint BPE {data.get('vocab_size', '?')}"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _Fields(dict):
    """A results dict that records why a value is null."""

    def __init__(self) -> None:
        super().__init__()
        self.reasons: dict[str, str] = {}

    def put(self, key: str, value: Any, reason: str | None = None) -> None:
        value = _finite(value)
        self[key] = value
        if value is None:
            self.reasons[key] = reason or "not measured"
        else:
            self.reasons.pop(key, None)


# -- the callback ---------------------------------------------------------------------------
class ResultsCallback(L.Callback):
    """Write results.json (rank zero) at the end of fit and of test.

    Args:
        output_dir: directory of results.json; None = `trainer.default_root_dir`.
        filename: file name inside it.
        experiment: experiment name to record; None = Hydra's `experiment` choice.
    """

    def __init__(self, output_dir: str | None = None, filename: str = RESULTS_FILENAME,
                 experiment: str | None = None) -> None:
        super().__init__()
        self.output_dir = output_dir
        self.filename = filename
        # Read here, in the launching process: DDP-spawned workers have no HydraConfig.
        self.hydra_choices = _hydra_choices()
        self.experiment = experiment if experiment is not None else self.hydra_choices.get("experiment")
        self.stages: list[str] = []
        self.device_names: list[str] | None = None
        self.path: Path | None = None

    # -- hooks ---------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._collect_device_names(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.device_names is None:
            self._collect_device_names(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "fit" not in self.stages:
            self.stages.append("fit")
        self._write(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "test" not in self.stages:
            self.stages.append("test")
        self._write(trainer, pl_module)

    def _collect_device_names(self, trainer: L.Trainer) -> None:
        """One device name per rank (every rank must call this: it is a collective under DDP)."""
        own = _device_name(trainer.strategy.root_device)
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            names: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(names, own)
            self.device_names = [str(n) for n in names]
        else:
            self.device_names = [own] * max(1, trainer.world_size)

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        out_dir = Path(self.output_dir or trainer.default_root_dir)
        self.path = out_dir / self.filename
        results = self.build(trainer, pl_module)
        if "fit" not in self.stages and self.path.exists():
            results = self._merge_test_into(self.path, results)
        problems = validate_results(results)
        if problems:
            log.warning("results.json does not validate (written anyway):\n  %s", "\n  ".join(problems))
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)
        log.info("Wrote %s (%s)", self.path, "+".join(results["stages"]))

    @staticmethod
    def _merge_test_into(path: Path, fresh: dict[str, Any]) -> dict[str, Any]:
        """Update an existing (fit) results file with this process's test fields."""
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return fresh
        if validate_results(old):
            return fresh
        merged = dict(old)
        reasons = dict(old.get("null_reasons", {}))
        for key in TEST_FIELDS:
            merged[key] = fresh[key]
            reasons.pop(key, None)
            if fresh[key] is None:
                reasons[key] = fresh["null_reasons"][key]
        merged["stages"] = list(dict.fromkeys([*old.get("stages", []), "test"]))
        merged["created_at"] = fresh["created_at"]
        merged["null_reasons"] = reasons
        return merged

    # -- building ------------------------------------------------------------------------
    def _find(self, trainer: L.Trainer, cls: type) -> Any:
        return next((cb for cb in trainer.callbacks if isinstance(cb, cls)), None)

    def build(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The results dict of this run as far as it has got (see docs/results_schema.md)."""
        import nmtbench
        from nmtbench.callbacks.bleu import BleuCallback
        from nmtbench.callbacks.gpu_stats import GpuStatsCallback
        from nmtbench.callbacks.throughput import ThroughputCallback
        from nmtbench.callbacks.wallclock import WallClockCallback

        hparams = getattr(pl_module, "hparams", {}) or {}
        cfg = hparams.get("cfg") if isinstance(hparams, dict) or hasattr(hparams, "get") else None
        cfg = cfg if isinstance(cfg, dict) else None
        data = (cfg or {}).get("data") or {}
        model_cfg = (cfg or {}).get("model") or {}
        fitted = "fit" in self.stages
        no_fit = "no training in this process (test only)"
        r = _Fields()

        # identity
        r.put("schema_version", SCHEMA_VERSION)
        r.put("created_at", dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        r.put("stages", list(self.stages))
        r.put("experiment", self.experiment,
              "no experiment= override" if self.hydra_choices else "not launched through Hydra; no experiment name given")
        r.put("task_name", (cfg or {}).get("task_name"), "no task_name in the config")
        r.put("run_dir", str(Path(self.output_dir or trainer.default_root_dir).resolve()))
        r.put("config_digest", config_digest(cfg) if cfg else None, "the LightningModule has no hparams['cfg']")
        r.put("seed", (cfg or {}).get("seed"), "no seed in the config")
        r.put("nmtbench_version", getattr(nmtbench, "__version__", "unknown"))

        # model and data
        model = getattr(pl_module, "model", pl_module)
        model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
        r.put("model_name", model_cfg.get("name") or type(model).__name__)
        r.put("model_variant", self.hydra_choices.get("model"), "not launched through Hydra")
        r.put("model_config", dict(model_cfg))
        num_params = getattr(pl_module, "num_parameters", None)
        r.put("num_parameters", int(num_params if num_params is not None else
                                    sum(p.numel() for p in model.parameters())))
        describe = getattr(getattr(trainer, "datamodule", None), "describe", None)
        description = describe() if callable(describe) else _describe_data(data)
        no_data = "no data section in the config"
        r.put("data_source", data.get("source"), no_data)
        r.put("data_description", description, no_data)
        r.put("src_lang", data.get("src_lang"), no_data)
        r.put("tgt_lang", data.get("tgt_lang"), no_data)
        r.put("vocab_size", hparams.get("vocab_size") or data.get("vocab_size"), no_data)

        # hardware
        r.put("world_size", int(trainer.world_size))
        r.put("num_nodes", int(trainer.num_nodes))
        r.put("accelerator", trainer.strategy.root_device.type)
        r.put("device_names", list(self.device_names or [_device_name(trainer.strategy.root_device)]))
        r.put("precision", str(trainer.precision))

        # throughput (+ tokens seen, peak)
        tp = self._find(trainer, ThroughputCallback)
        tp_reason = ("ThroughputCallback not configured (callbacks.throughput=null)" if tp is None else no_fit)
        ts = tp.summary() if tp is not None and fitted else {}
        peak_reason = tp_reason if not ts else (tp.peak_source or "unknown peak FLOP/s")
        r.put("peak_flops_per_device", ts.get("peak_flops_per_device"), peak_reason)
        r.put("peak_flops_source", ts.get("peak_flops_source") if ts.get("peak_flops_per_device") else None,
              peak_reason)

        r.put("steps", int(trainer.global_step) if fitted else None, no_fit)
        r.put("epochs", int(trainer.current_epoch) if fitted else None, no_fit)
        for key in ("tokens_seen", "tgt_tokens_seen", "sentences_seen"):
            r.put(key, ts.get(key), tp_reason)

        # wall-clock
        wc = self._find(trainer, WallClockCallback)
        wc_reason = "WallClockCallback not configured (callbacks.wallclock=null)" if wc is None else no_fit
        ws = wc.summary() if wc is not None and fitted else {}
        for key in ("train_hours", "train_hours_excl_val", "val_hours", "device_hours"):
            r.put(key, ws.get(key), wc_reason)
        gpu_hours_reason = wc_reason if not ws else "not a GPU run (device_hours = wall-clock x processes)"
        r.put("gpu_hours", ws.get("gpu_hours"), gpu_hours_reason)

        # Rates over WallClockCallback's training time excluding validation when it is there
        # (so tokens_per_sec == tokens_seen / train_hours_excl_val exactly), else the
        # throughput callback's own (equivalent) measurement.
        seconds = ws["train_hours_excl_val"] * HOUR if ws else ts.get("train_seconds_excl_val")
        rate_reason = tp_reason if not ts else "no training time measured"
        rate = (lambda n: n / seconds) if ts and seconds else (lambda n: None)
        tokens_per_sec = rate(ts.get("tokens_seen"))
        r.put("tokens_per_sec", tokens_per_sec, rate_reason)
        r.put("tgt_tokens_per_sec", rate(ts.get("tgt_tokens_seen")), rate_reason)
        r.put("tokens_per_sec_per_device",
              None if tokens_per_sec is None else tokens_per_sec / trainer.world_size, rate_reason)
        flops_reason = tp_reason if not ts else "the model has no flops_per_batch(src_lens, tgt_lens)"
        r.put("train_flops", ts.get("train_flops"), flops_reason)
        mfu_value = (mfu(ts["train_flops"], seconds, trainer.world_size, ts.get("peak_flops_per_device"))
                     if ts.get("train_flops") is not None and seconds else None)
        mfu_reason = flops_reason if ts.get("train_flops") is None else peak_reason
        r.put("mfu", mfu_value, mfu_reason)

        # GPU
        gs = self._find(trainer, GpuStatsCallback)
        if gs is None:
            gpu_reason, gsum = "GpuStatsCallback not configured (callbacks.gpu_stats=null)", {}
        elif not fitted:
            gpu_reason, gsum = no_fit, {}
        elif not gs.enabled:
            gpu_reason, gsum = gs.disabled_reason or "GpuStatsCallback disabled", {}
        else:
            gpu_reason, gsum = f"no NVML samples (training shorter than interval_s={gs.interval_s})", gs.summary()
        for key in ("gpu_util_mean", "gpu_mem_gb_mean", "gpu_mem_gb_max", "gpu_power_w_mean"):
            r.put(key, gsum.get(key), gpu_reason)
        per_device = gsum.get("gpu_per_device", [])
        for row in per_device:
            if row.get("name") is None and self.device_names and row["rank"] < len(self.device_names):
                row["name"] = self.device_names[row["rank"]]
        r.put("gpu_per_device", per_device)

        # BLEU
        bleu = self._find(trainer, BleuCallback)
        bleu_reason = "BleuCallback not configured (callbacks.bleu=null)"
        no_val = "no validation with BLEU ran"
        r.put("best_val_bleu", getattr(bleu, "best_bleu", None), bleu_reason if bleu is None else no_val)
        r.put("last_val_bleu", getattr(bleu, "last_bleu", None), bleu_reason if bleu is None else no_val)
        curve = ws.get("val_curve", [])
        best_step = max(curve, key=lambda p: p["bleu"])["step"] if curve else None
        r.put("best_val_bleu_step", best_step, wc_reason if not ws else no_val)
        scores = getattr(bleu, "test_scores", None) if "test" in self.stages else None
        test_reason = (bleu_reason if bleu is None else
                       "test has not run in this process" if "test" not in self.stages else
                       "BleuCallback produced no test scores")
        for key, source_key in TEST_FIELDS.items():
            r.put(key, (scores or {}).get(source_key), test_reason)
        r.put("time_to_bleu", ws.get("time_to_bleu", []))
        r.put("val_curve", curve)

        out = dict(r)
        out["null_reasons"] = dict(sorted(r.reasons.items()))
        return out


__all__ = ["ResultsCallback", "validate_results", "load_results", "results_schema", "config_digest",
           "SCHEMA_VERSION"]
