"""The report package on synthetic results.json files (schema 1.1, and 1.0 files without the
1.1 fields): rows (ours, seeds, published), table.md, table.csv, plots, the command line."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nmtbench.report import (
    CSV_COLUMNS,
    MARKDOWN_HEADER,
    Row,
    curves_from_tensorboard,
    load_published,
    main,
    write_report,
)
from nmtbench.report.plots import plot_bleu_vs_time
from nmtbench.results_schema import validate_results

SIGNATURE = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.4.3"
PAPER_SIGNATURE = SIGNATURE + "|pretok:moses-de+compound-split"
ROOT = Path(__file__).resolve().parents[2]


def evaluation(weights: str, sacrebleu: float, paper_bleu: float, averaged_from=None) -> dict:
    return {"weights": weights, "ckpt_path": f"/runs/x/{weights}.ckpt", "averaged_from": averaged_from,
            "global_step": 600, "sacrebleu": sacrebleu, "signature": SIGNATURE, "paper_bleu": paper_bleu,
            "paper_bleu_signature": PAPER_SIGNATURE, "chrf": 55.0, "chrf_signature": "chrF2",
            "beam_size": 4, "length_penalty": 0.6, "num_sentences": 1000}


def make_results(run_dir: Path, **over) -> dict:
    """A complete, valid schema-1.1 results dict (docs/results_schema.md; OWNERSHIP.md for the
    1.1 fields); `over` replaces keys. Every null value gets a null_reasons entry."""
    best = evaluation("best", 30.0, 31.5)
    averaged = evaluation("averaged", 31.25, 32.75, averaged_from=[f"/runs/x/step{s}.ckpt" for s in range(5)])
    r = {
        "schema_version": "1.1", "created_at": "2026-01-01T00:00:00+00:00", "stages": ["fit", "test"],
        "experiment": "mini_transformer", "task_name": "mini_transformer", "run_dir": str(run_dir),
        "config_digest": "sha256:" + "0" * 64, "seed": 1234, "nmtbench_version": "0.1.0",
        "model_name": "transformer", "model_variant": "transformer",
        "model_config": {"name": "transformer", "num_encoder_layers": 3, "num_decoder_layers": 3, "d_model": 256},
        "num_parameters": 7_600_000, "data_source": "files",
        "data_description": "files (multi30k) en->de, joint BPE 8000", "src_lang": "en", "tgt_lang": "de",
        "vocab_size": 8000, "world_size": 1, "num_nodes": 1, "accelerator": "cpu", "device_names": ["cpu"],
        "precision": "32-true", "peak_flops_per_device": 5.0e10, "peak_flops_source": "measured: CPU fp32 matmul",
        "steps": 600, "epochs": 3, "tokens_seen": 2_000_000, "tgt_tokens_seen": 1_000_000,
        "sentences_seen": 80_000, "train_hours": 1 / 3, "train_hours_excl_val": 0.3, "val_hours": 1 / 30,
        "device_hours": 1 / 3, "gpu_hours": None, "tokens_per_sec": 1850.0, "tgt_tokens_per_sec": 925.0,
        "tokens_per_sec_per_device": 1850.0, "train_flops": 1.0e14, "mfu": 0.12, "gpu_util_mean": None,
        "gpu_kernel_active_pct_mean": None,
        "gpu_mem_gb_mean": None, "gpu_mem_gb_max": None, "gpu_power_w_mean": None, "gpu_per_device": [],
        "best_val_bleu": 30.5, "best_val_bleu_step": 600, "last_val_bleu": 30.5,
        "best_val_paper_bleu": 31.0,
        "test_sacrebleu": 31.25, "test_sacrebleu_signature": SIGNATURE, "test_paper_bleu": 32.75,
        "test_paper_bleu_signature": PAPER_SIGNATURE, "test_chrf": 55.0, "test_chrf_signature": "chrF2",
        "test_beam_size": 4, "test_length_penalty": 0.6, "test_num_sentences": 1000,
        "test_evaluations": [best, averaged], "test_weights": "averaged",
        "test_ckpt_path": averaged["ckpt_path"], "test_averaged_from": averaged["averaged_from"],
        "time_to_bleu": [
            {"target": 20.0, "metric": "val/bleu", "reached": True, "step": 200, "hours": 0.1,
             "hours_excl_val": 0.09, "device_hours": 0.1, "bleu": 21.0},
            {"target": 25.8, "metric": "val/paper_bleu", "reached": False, "step": None, "hours": None,
             "hours_excl_val": None, "device_hours": None, "bleu": None}],
        "time_to_fraction_of_best": [
            {"fraction": f, "metric": "val/bleu", "threshold": f * 30.5, "step": step, "hours": hours,
             "hours_excl_val": hours * 0.9, "device_hours": hours}
            for f, step, hours in ((0.9, 400, 0.2), (0.95, 600, 0.32), (0.99, 600, 0.32))],
        "val_curve": [{"step": 200, "hours": 0.1, "hours_excl_val": 0.09, "device_hours": 0.1, "bleu": 21.0,
                       "paper_bleu": 22.0},
                      {"step": 400, "hours": 0.2, "hours_excl_val": 0.18, "device_hours": 0.2, "bleu": 27.0,
                       "paper_bleu": 28.0},
                      {"step": 600, "hours": 0.32, "hours_excl_val": 0.3, "device_hours": 0.32, "bleu": 30.5,
                       "paper_bleu": 31.0}],
    }
    r.update(over)
    defaults = {"gpu_hours": "not a GPU run (device_hours = wall-clock x processes)",
                "gpu_util_mean": "no NVIDIA GPU (running on cpu)",
                "gpu_kernel_active_pct_mean": "no NVIDIA GPU (running on cpu)"}
    r["null_reasons"] = {k: defaults.get(k, f"{k} unavailable in this test") for k, v in r.items() if v is None}
    return r


def as_schema_1_0(results: dict) -> dict:
    """The same run as a schema-1.0 writer wrote it: no 1.1 keys."""
    r = copy.deepcopy(results)
    r["schema_version"] = "1.0"
    for key in ("best_val_paper_bleu", "time_to_fraction_of_best", "test_evaluations", "test_weights",
                "test_ckpt_path", "test_averaged_from", "gpu_kernel_active_pct_mean"):
        r.pop(key, None)
        r["null_reasons"].pop(key, None)
    for entry in r["time_to_bleu"]:
        entry.pop("metric")
    for point in r["val_curve"]:
        point.pop("paper_bleu")
        point.pop("device_hours")
    return r


def write_run(root: Path, name: str, schema: str = "1.1", config: dict | None = None, **over) -> Path:
    """A run directory: results.json and the config.yaml train.py writes (resolved)."""
    run = root / name
    run.mkdir(parents=True)
    results = make_results(run, **over)
    if schema == "1.0":
        results = as_schema_1_0(results)
    assert validate_results(results) == [], validate_results(results)
    (run / "results.json").write_text(json.dumps(results), encoding="utf-8")
    cfg = {"task_name": results["experiment"], "seed": results["seed"],
           "data": {"dir": "/data/multi30k", "test_prefix": "test2016", "max_tokens": 2048},
           "trainer": {"default_root_dir": str(run), "max_time": "00:00:20:00"},
           "callbacks": {"model_checkpoint": {"dirpath": f"{run}/checkpoints"}},
           "paths": {"output_dir": str(run), "root_dir": "."}}
    for key, value in (config or {}).items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    (run / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return run


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "table_mini"
    write_run(root, "mini_transformer")
    write_run(root, "mini_seq2seq", experiment="mini_seq2seq", model_name="lstm", model_variant="lstm_seq2seq",
              model_config={"name": "lstm", "num_layers": 2, "hidden_size": 512, "attention": "none"},
              num_parameters=11_000_000, test_sacrebleu=12.5, test_paper_bleu=13.0, tokens_per_sec=600.0,
              mfu=None, test_evaluations=[evaluation("best", 12.5, 13.0)], test_weights="best",
              test_ckpt_path="/runs/x/best.ckpt", test_averaged_from=None)
    # A GPU run that stopped before the test: test fields are null (with reasons).
    write_run(root, "vaswani2017_base", experiment="vaswani2017_base", accelerator="cuda",
              device_names=["NVIDIA H100 80GB HBM3"] * 8, precision="bf16-mixed", world_size=8,
              data_source="wmt14", gpu_hours=8 * 2.5, train_hours=2.5, device_hours=20.0,
              gpu_util_mean=87.5, stages=["fit"], test_sacrebleu=None, test_sacrebleu_signature=None,
              test_paper_bleu=None, test_paper_bleu_signature=None, test_chrf=None, test_chrf_signature=None,
              test_beam_size=None, test_length_penalty=None, test_num_sentences=None, test_evaluations=[],
              test_weights=None, test_ckpt_path=None, test_averaged_from=None,
              tokens_per_sec=400_000.0, num_parameters=63_000_000)
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def md_cells(md: str, marker: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if marker in ln)
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


def column(name: str) -> int:
    return MARKDOWN_HEADER.index(name)


def test_published_rows_are_data_with_the_cited_numbers():
    families, rows = load_published()
    bleu = {r.name: r.paper_bleu for r in rows}
    assert bleu == {"luong2015_seq2seq": 14.0, "luong2015_attention": 18.6, "luong2015_best_single": 20.9,
                    "wu2016_gnmt": 24.6, "vaswani2017_base": 27.3, "vaswani2017_big": 28.4}
    base = next(r for r in rows if r.name == "vaswani2017_base")
    assert base.gpu_hours == 96 and base.wall_clock_text == "12 h" and base.hardware == "8 x P100"
    assert "last 5 checkpoints" in base.test_weights
    luong = next(r for r in rows if r.name == "luong2015_seq2seq")
    assert luong.gpu_hours_range == (168.0, 240.0) and "Table 1" in luong.source
    assert all(r.sacrebleu is None and "sacrebleu" in r.null_reasons for r in rows)
    assert set(r.family for r in rows) <= set(families)
    for row in rows:
        for exp in row.experiments:
            assert (ROOT / "configs" / "experiment" / f"{exp}.yaml").is_file(), exp


def test_report_writes_table_csv_and_plots(runs, tmp_path):
    out = tmp_path / "report"
    files = write_report([runs], out)
    for name in ("table.md", "table.csv", "bleu_vs_wallclock.png", "bleu_vs_gpu_hours.png", "throughput.png"):
        assert files[name].is_file() and files[name].stat().st_size > 0, name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = read_csv(out / "table.csv")
    ours = {r["name"]: r for r in rows if r["kind"] == "ours"}
    published = {r["name"]: r for r in rows if r["kind"] == "published"}
    assert set(ours) == {"mini_transformer", "mini_seq2seq", "vaswani2017_base"}
    assert len(published) == 6
    t = ours["mini_transformer"]
    # The averaged evaluation, not the best checkpoint's (30.0 / 31.5), and it says so.
    assert float(t["sacrebleu"]) == 31.25 and float(t["paper_bleu"]) == 32.75
    assert t["test_weights"] == "averaged (5 checkpoints)"
    assert ours["mini_seq2seq"]["test_weights"] == "best checkpoint"
    assert t["sacrebleu_signature"] == SIGNATURE and t["family"] == "transformer"
    assert t["gpu_hours"] == "" and t["gpu_util_mean"] == "" and t["accelerator"] == "cpu"
    assert float(t["device_hours"]) == pytest.approx(1 / 3) and float(t["mfu"]) == 0.12
    assert t["test_set"] == "multi30k/test2016 (1000 sent.)" and t["seeds"] == "[1234]"
    assert [float(t[f"time_to_{p}_hours"]) for p in (90, 95, 99)] == [0.2, 0.32, 0.32]
    assert json.loads(t["time_to_targets"])[1] == {"target": 25.8, "metric": "val/paper_bleu", "reached": 0,
                                                  "of": 1, "hours": None}
    assert ours["mini_seq2seq"]["family"] == "lstm_seq2seq"
    assert ours["vaswani2017_base"]["hardware"] == "8 x NVIDIA H100 80GB HBM3, bf16-mixed"
    assert float(ours["vaswani2017_base"]["gpu_hours"]) == 20.0
    assert float(published["vaswani2017_base"]["paper_bleu"]) == 27.3
    assert published["luong2015_seq2seq"]["gpu_hours_range"] == "168-240"

    # Grouped by family, published rows first within each family.
    order = [(r["family"], r["kind"], r["name"]) for r in rows]
    assert order.index(("transformer", "published", "vaswani2017_base")) < order.index(
        ("transformer", "ours", "mini_transformer"))
    assert order.index(("lstm_seq2seq", "ours", "mini_seq2seq")) < order.index(
        ("transformer", "published", "vaswani2017_base"))


def test_csv_columns_are_the_row_fields(runs, tmp_path):
    """table.csv follows the Row dataclass: every field but the plot data, in its order."""
    files = write_report([runs], tmp_path / "r", include_published=False)
    with open(files["table.csv"], newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    plot_only = {"val_curve", "loss_curve", "members"}
    assert header == CSV_COLUMNS == [f.name for f in dataclasses.fields(Row) if f.name not in plot_only]


def test_markdown_shows_time_to_fractions_targets_weights_and_explains_gaps(runs, tmp_path):
    write_report([runs], tmp_path / "report")
    md = (tmp_path / "report" / "table.md").read_text(encoding="utf-8")
    assert "| " + " | ".join(MARKDOWN_HEADER) + " |" in md
    cells = md_cells(md, "**mini_transformer")
    assert cells[column("tok. BLEU (paper-style)")].startswith(("32.8", "32.7"))
    assert cells[column("sacreBLEU (detok.)")].startswith(("31.2", "31.3"))
    assert cells[column("Tested weights")] == "averaged (5 checkpoints)"
    assert cells[column("To 90 / 95 / 99% of best val BLEU")].startswith("12.0 / 19.2 / 19.2 min [")
    targets = cells[column("Time to target val BLEU")]
    assert targets == "≥20 val/bleu: 6.0 min; ≥25.8 val/paper_bleu: not reached"
    assert cells[column("GPU-hours")].startswith("n/a (CPU")
    assert cells[column("GPU util")].startswith("n/a [")
    base = md_cells(md, "**vaswani2017_base")
    assert base[column("sacreBLEU (detok.)")].startswith("— [")  # test BLEU missing: dash + note
    assert "test_sacrebleu unavailable in this test" in md  # the null reason as a note
    assert "no NVIDIA GPU (running on cpu)" in md
    assert "reached 90 / 95 / 99% of the run's best value of it" in md
    assert SIGNATURE in md and "Which BLEU is which" in md
    assert "| 27.3 |" in md and "| 14.0 |" in md and "Luong et al. 2015, Table 1" in md
    assert "Test sets differ" in md


def test_a_schema_1_0_file_is_read_as_1_1_with_what_it_cannot_say_noted(tmp_path):
    run = write_run(tmp_path / "runs", "old", schema="1.0")
    write_report([run], tmp_path / "report", include_published=False)
    md = (tmp_path / "report" / "table.md").read_text(encoding="utf-8")
    cells = md_cells(md, "**mini_transformer")
    assert cells[column("sacreBLEU (detok.)")].startswith("31.2")  # the top-level test_* fields
    # results_schema.load_results upgrades a 1.0 file: the fractions of the best come from its
    # val_curve (21, 27, 30.5 BLEU at 6, 12, 19.2 min: 90% of 30.5 is first reached at 19.2 min)
    # and its targets were on val/bleu (the only 1.0 metric) ...
    assert cells[column("To 90 / 95 / 99% of best val BLEU")].startswith("19.2 / 19.2 / 19.2 min")
    assert "val/bleu" in md and "val/bleu? [" not in md
    # ... but which weights its test used was not recorded: a dash with the reason.
    assert cells[column("Tested weights")].startswith("— [")
    assert "not recorded (schema 1.0 file)" in md


def test_seeds_of_one_setting_are_one_row_with_mean_and_range(tmp_path):
    root = tmp_path / "runs"
    for i, (seed, bleu) in enumerate(((1, 26.8), (2, 27.4))):
        write_run(root, f"seed{seed}", seed=seed, test_paper_bleu=bleu + 1, test_sacrebleu=bleu,
                  test_evaluations=[evaluation("best", bleu, bleu + 1)], test_weights="best",
                  test_ckpt_path="/x/best.ckpt", test_averaged_from=None,
                  train_hours=0.3 + 0.02 * i)
    # Same experiment, another setting (batch size): a row of its own, named by its directory.
    write_run(root, "bigger_batch", config={"data": {"max_tokens": 4096}})
    files = write_report([root], tmp_path / "report", include_published=False)
    rows = {r["name"]: r for r in read_csv(files["table.csv"])}
    merged = rows["mini_transformer [runs/seed1]"]
    assert float(merged["sacrebleu"]) == pytest.approx(27.1) and merged["sacrebleu_range"] == "26.8-27.4"
    assert merged["seeds"] == "[1, 2]" and float(merged["wall_clock_hours"]) == pytest.approx(0.31)
    assert "mini_transformer [runs/bigger_batch]" in rows and len(rows) == 2
    md = files["table.md"].read_text(encoding="utf-8")
    cells = md_cells(md, "**mini_transformer [runs/seed1]")
    assert cells[column("sacreBLEU (detok.)")].startswith("27.1 (26.8–27.4), 2 seeds")
    assert "(ours, 2 seeds)" in cells[0]
    # Every seed's curve in the BLEU-vs-wall-clock plot.
    from nmtbench.report import load_published, load_runs

    families, published = load_published()
    ours = load_runs([root], published, families, use_tensorboard=False)
    unit, labels = plot_bleu_vs_time(ours, tmp_path / "p.png")
    assert unit == "minutes"
    assert sorted(labels) == ["mini_transformer [runs/bigger_batch]", "mini_transformer [runs/seed1] (seed 1)",
                              "mini_transformer [runs/seed1] (seed 2)"]


def test_wall_clock_axis_is_minutes_under_two_hours_else_hours(tmp_path):
    short = Row(kind="ours", family="transformer", name="a", system="a", source="a",
                val_curve=[{"hours": 0.1, "bleu": 5.0}, {"hours": 1.9, "bleu": 9.0}])
    long = dataclasses.replace(short, val_curve=[{"hours": 0.5, "bleu": 5.0}, {"hours": 12.0, "bleu": 20.0}])
    assert plot_bleu_vs_time([short], tmp_path / "s.png")[0] == "minutes"
    assert plot_bleu_vs_time([long], tmp_path / "l.png")[0] == "hours"


def test_report_without_runs_shows_only_published_rows(tmp_path):
    files = write_report([], tmp_path / "r")
    rows = read_csv(files["table.csv"])
    assert rows and all(r["kind"] == "published" for r in rows)


def test_tensorboard_curve_is_used_when_results_has_none(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = write_run(tmp_path / "runs", "tb_run", val_curve=[])
    writer = SummaryWriter(str(run / "tensorboard"))
    for step, hours, bleu, loss in ((100, 0.05, 10.0, 5.0), (200, 0.1, 20.0, 4.0)):
        writer.add_scalar("time/train_hours", hours, step)
        writer.add_scalar("val/bleu", bleu, step)
        writer.add_scalar("train/loss", loss, step)
    writer.close()
    val, loss = curves_from_tensorboard(run)
    assert [(p["step"], round(p["hours"], 3), p["bleu"]) for p in val] == [(100, 0.05, 10.0), (200, 0.1, 20.0)]
    assert len(loss) == 2
    files = write_report([run], tmp_path / "report")
    assert "train_loss_vs_wallclock.png" in files


def test_cli_errors_are_one_line_on_stderr_naming_the_file_and_fix(tmp_path, capsys):
    run = tmp_path / "bad"
    run.mkdir()
    broken = make_results(run)
    del broken["steps"]
    (run / "results.json").write_text(json.dumps(broken), encoding="utf-8")
    assert main([str(run), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(run / "results.json") in err and "steps: missing" in err
    assert "fix: re-run" in err
    (run / "results.json").write_text("{not json", encoding="utf-8")
    assert main([str(run), "--out", str(tmp_path / "out")]) == 1
    assert "not valid JSON (line 1" in capsys.readouterr().err
    # A missing run is skipped with --allow-missing (as reproduce_table.sh does), with a warning.
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "out2"), "--allow-missing"]) == 0
    assert "warning: skipped" in capsys.readouterr().err


def test_scripts_report_keeps_its_command_line(runs, tmp_path):
    """`python scripts/report.py RUNS --out DIR [--no-published ...]`, errors without a traceback."""
    script = str(ROOT / "scripts" / "report.py")
    ok = subprocess.run([sys.executable, script, str(runs), "--out", str(tmp_path / "r"), "--no-published",
                         "--no-tensorboard"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "mini_transformer" in ok.stdout and (tmp_path / "r" / "table.csv").is_file()
    bad = subprocess.run([sys.executable, script, str(tmp_path / "nope"), "--out", str(tmp_path / "r2")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith(f"error: {tmp_path / 'nope'}: no such file or directory; pass run directories")
