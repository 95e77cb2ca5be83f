"""ResultsCallback: merge the measurement callbacks' summaries into the per-run results.json.

At the end of fit and again at the end of each test, rank zero writes
`<output_dir>/results.json` (schema: docs/results_schema.md, `nmtbench/results_schema.json`).
This callback records what the run is: identity, model, data, hardware and steps. Every
measurement comes from the `summary() -> (fields, null_reasons)` of a `MeasurementCallback`
in `trainer.callbacks` (wall-clock, throughput, GPU stats, BLEU, and any other subclass); one
of `MEASUREMENTS` that is not configured contributes its fields as null with that reason.
Every field is always present; a field that cannot be measured is null and
`null_reasons[field]` says why.

A process that only tests (no fit) and finds an existing results.json in its output
directory adds its test evaluations to that file instead of replacing it.

This callback writes; readers validate (`nmtbench.results_schema.load_results`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from nmtbench.callbacks.bleu import BleuCallback, summarize_tests
from nmtbench.callbacks.common import Fields, MeasurementCallback, Summary
from nmtbench.callbacks.gpu_stats import GpuStatsCallback
from nmtbench.callbacks.nonfinite import NonFiniteLossCallback
from nmtbench.callbacks.throughput import ThroughputCallback
from nmtbench.callbacks.wallclock import WallClockCallback
from nmtbench.distributed import on_rank_zero

# Re-exported for callers written before validation moved to nmtbench.results_schema.
from nmtbench.results_schema import SCHEMA_VERSION, ResultsFileError, load_results, results_schema
from nmtbench.results_schema import validate_results as validate_results

log = logging.getLogger(__name__)

RESULTS_FILENAME = "results.json"
MEASUREMENTS: tuple[type[MeasurementCallback], ...] = (
    ThroughputCallback, WallClockCallback, GpuStatsCallback, BleuCallback, NonFiniteLossCallback)


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


class ResultsCallback(L.Callback):
    """Write results.json (rank zero) at the end of fit and of each test.

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
        self._base: dict[str, Any] | None = None  # the file a test-only process adds to
        self._base_read = False

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

    # -- writing -------------------------------------------------------------------------
    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Rank zero writes; every rank learns whether it could (nmtbench.distributed)."""
        on_rank_zero(trainer, f"writing {self.filename}", self._write_on_rank_zero, trainer, pl_module)

    def _write_on_rank_zero(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out_dir = Path(self.output_dir or trainer.default_root_dir)
        self.path = out_dir / self.filename
        results = self.build(trainer, pl_module)
        if "fit" not in self.stages:
            base = self._read_base(self.path)
            if base is not None:
                results = self._add_tests_to(base, results)
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)
        log.info("Wrote %s (%s)", self.path, "+".join(results["stages"]))

    def _read_base(self, path: Path) -> dict[str, Any] | None:
        """The results.json this test-only process found (read once, before its first write)."""
        if not self._base_read:
            self._base_read = True
            if path.exists():
                try:
                    self._base = load_results(path)
                except (OSError, ResultsFileError) as err:
                    log.warning("Replacing %s, which cannot be read: %s", path, err)
        return self._base

    @staticmethod
    def _add_tests_to(base: dict[str, Any], fresh: dict[str, Any]) -> dict[str, Any]:
        """`base` (a fit's results) with the test evaluations of this process appended."""
        if not fresh["test_evaluations"]:
            return base
        evaluations = base["test_evaluations"] + fresh["test_evaluations"]
        fields, reasons = summarize_tests(evaluations, "no test evaluation")
        merged = {**base, **fields, "schema_version": SCHEMA_VERSION, "created_at": fresh["created_at"],
                  "stages": list(dict.fromkeys([*base.get("stages", []), "test"]))}
        old_reasons = {k: v for k, v in base["null_reasons"].items() if k not in fields}
        merged["null_reasons"] = dict(sorted({**old_reasons, **reasons}.items()))
        return merged

    # -- building ------------------------------------------------------------------------
    def build(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The results dict of this run as far as it has got (see docs/results_schema.md)."""
        summaries = [self.run_summary(trainer, pl_module)]
        present = [cb for cb in trainer.callbacks if isinstance(cb, MeasurementCallback)]
        summaries += [cb.summary() for cb in present]
        summaries += [cls.not_configured() for cls in MEASUREMENTS
                      if not any(isinstance(cb, cls) for cb in present)]
        fields: dict[str, Any] = {}
        reasons: dict[str, str] = {}
        for values, why in summaries:
            fields.update(values)
            reasons.update(why)
        order = results_schema()["required"]
        out = {k: fields[k] for k in order if k in fields} | {k: v for k, v in fields.items() if k not in order}
        out["null_reasons"] = {k: reasons[k] for k in sorted(reasons) if k in out and out[k] is None}
        return out

    def run_summary(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Summary:
        """What the run is: identity, model, data, hardware and progress."""
        import nmtbench

        hparams = getattr(pl_module, "hparams", {}) or {}
        cfg = hparams.get("cfg") if isinstance(hparams, dict) or hasattr(hparams, "get") else None
        cfg = cfg if isinstance(cfg, dict) else None
        data = (cfg or {}).get("data") or {}
        model_cfg = (cfg or {}).get("model") or {}
        r = Fields()

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

        model = getattr(pl_module, "model", pl_module)
        model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
        r.put("model_name", model_cfg.get("name") or type(model).__name__)
        r.put("model_variant", self.hydra_choices.get("model"), "not launched through Hydra")
        r.put("model_config", dict(model_cfg))
        num_params = getattr(pl_module, "num_parameters", None)
        r.put("num_parameters", int(num_params if num_params is not None else
                                    sum(p.numel() for p in model.parameters())))
        describe = getattr(getattr(trainer, "datamodule", None), "describe", None)
        no_data = "no data section in the config"
        r.put("data_source", data.get("source"), no_data)
        r.put("data_description", describe() if callable(describe) else _describe_data(data), no_data)
        r.put("src_lang", data.get("src_lang"), no_data)
        r.put("tgt_lang", data.get("tgt_lang"), no_data)
        r.put("vocab_size", hparams.get("vocab_size") or data.get("vocab_size"), no_data)

        r.put("world_size", int(trainer.world_size))
        r.put("num_nodes", int(trainer.num_nodes))
        r.put("accelerator", trainer.strategy.root_device.type)
        r.put("device_names", list(self.device_names or [_device_name(trainer.strategy.root_device)]))
        r.put("precision", str(trainer.precision))

        fitted = "fit" in self.stages
        no_fit = "no training in this process (test only)"
        r.put("steps", int(trainer.global_step) if fitted else None, no_fit)
        r.put("epochs", int(trainer.current_epoch) if fitted else None, no_fit)
        return r.summary()


__all__ = ["ResultsCallback", "MEASUREMENTS", "config_digest", "load_results", "validate_results"]
