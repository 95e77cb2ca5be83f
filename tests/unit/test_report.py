"""report.py on synthetic results.json files: rows (ours + published), CSV, markdown, plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from nmtbench.callbacks.results import validate_results
from nmtbench.report import CSV_COLUMNS, MARKDOWN_HEADER, load_published, main, write_report

SIGNATURE = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.4.3"
PAPER_SIGNATURE = SIGNATURE + "|pretok:moses-de+compound-split"


def make_results(run_dir: Path, **over) -> dict:
    """A complete, valid schema-1.0 results dict (docs/results_schema.md); `over` replaces keys.
    Every null value gets a null_reasons entry, as the schema requires."""
    r = {
        "schema_version": "1.0",
        "created_at": "2026-01-01T00:00:00+00:00",
        "stages": ["fit", "test"],
        "experiment": "mini_transformer",
        "task_name": "mini_transformer",
        "run_dir": str(run_dir),
        "config_digest": "sha256:" + "0" * 64,
        "seed": 1234,
        "nmtbench_version": "0.1.0",
        "model_name": "transformer",
        "model_variant": "transformer",
        "model_config": {"name": "transformer", "num_encoder_layers": 3, "num_decoder_layers": 3, "d_model": 256},
        "num_parameters": 7_600_000,
        "data_source": "files",
        "data_description": "files (multi30k) en->de, joint BPE 8000",
        "src_lang": "en",
        "tgt_lang": "de",
        "vocab_size": 8000,
        "world_size": 1,
        "num_nodes": 1,
        "accelerator": "cpu",
        "device_names": ["cpu"],
        "precision": "32-true",
        "peak_flops_per_device": 5.0e10,
        "peak_flops_source": "measured: CPU fp32 matmul",
        "steps": 600,
        "epochs": 3,
        "tokens_seen": 2_000_000,
        "tgt_tokens_seen": 1_000_000,
        "sentences_seen": 80_000,
        "train_hours": 1 / 3,
        "train_hours_excl_val": 0.3,
        "val_hours": 1 / 30,
        "device_hours": 1 / 3,
        "gpu_hours": None,
        "tokens_per_sec": 1850.0,
        "tgt_tokens_per_sec": 925.0,
        "tokens_per_sec_per_device": 1850.0,
        "train_flops": 1.0e14,
        "mfu": 0.12,
        "gpu_util_mean": None,
        "gpu_mem_gb_mean": None,
        "gpu_mem_gb_max": None,
        "gpu_power_w_mean": None,
        "gpu_per_device": [],
        "best_val_bleu": 30.5,
        "best_val_bleu_step": 600,
        "last_val_bleu": 30.5,
        "test_sacrebleu": 31.25,
        "test_sacrebleu_signature": SIGNATURE,
        "test_paper_bleu": 32.75,
        "test_paper_bleu_signature": PAPER_SIGNATURE,
        "test_chrf": 55.0,
        "test_chrf_signature": "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.4.3",
        "test_beam_size": 4,
        "test_length_penalty": 0.6,
        "test_num_sentences": 1000,
        "time_to_bleu": [{"target": 20.0, "reached": True, "step": 200, "hours": 0.1,
                          "hours_excl_val": 0.09, "device_hours": 0.1, "bleu": 21.0}],
        "val_curve": [{"step": 200, "hours": 0.1, "hours_excl_val": 0.09, "bleu": 21.0},
                      {"step": 400, "hours": 0.2, "hours_excl_val": 0.18, "bleu": 27.0},
                      {"step": 600, "hours": 0.32, "hours_excl_val": 0.3, "bleu": 30.5}],
    }
    r.update(over)
    defaults = {"gpu_hours": "not a GPU run (device_hours = wall-clock x processes)",
                "gpu_util_mean": "no NVIDIA GPU (running on cpu)"}
    r["null_reasons"] = {k: defaults.get(k, f"{k} unavailable in this test") for k, v in r.items() if v is None}
    return r


def write_run(root: Path, name: str, **over) -> Path:
    run = root / name
    run.mkdir(parents=True)
    results = make_results(run, **over)
    assert validate_results(results) == [], validate_results(results)
    (run / "results.json").write_text(json.dumps(results), encoding="utf-8")
    (run / "config.yaml").write_text("data:\n  dir: /data/multi30k\n  test_prefix: test2016\n", encoding="utf-8")
    return run


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "table_mini"
    write_run(root, "mini_transformer")
    write_run(root, "mini_seq2seq", experiment="mini_seq2seq", model_name="lstm", model_variant="lstm_seq2seq",
              model_config={"name": "lstm", "num_layers": 2, "hidden_size": 512, "attention": "none"},
              num_parameters=11_000_000, test_sacrebleu=12.5, test_paper_bleu=13.0, tokens_per_sec=600.0,
              mfu=None)
    # A GPU run that stopped before the test: test fields are null (with reasons).
    write_run(root, "vaswani2017_base", experiment="vaswani2017_base", accelerator="cuda",
              device_names=["NVIDIA H100 80GB HBM3"] * 8, precision="bf16-mixed", world_size=8,
              data_source="wmt14", gpu_hours=8 * 2.5, train_hours=2.5, device_hours=20.0,
              gpu_util_mean=87.5, stages=["fit"], test_sacrebleu=None, test_sacrebleu_signature=None,
              test_paper_bleu=None, test_paper_bleu_signature=None, test_chrf=None, test_chrf_signature=None,
              test_beam_size=None, test_length_penalty=None, test_num_sentences=None,
              tokens_per_sec=400_000.0, num_parameters=63_000_000)
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_published_rows_are_data_with_the_cited_numbers():
    families, rows = load_published()
    bleu = {r.name: r.paper_bleu for r in rows}
    assert bleu == {"luong2015_seq2seq": 14.0, "luong2015_attention": 18.6, "luong2015_best_single": 20.9,
                    "wu2016_gnmt": 24.6, "vaswani2017_base": 27.3, "vaswani2017_big": 28.4}
    base = next(r for r in rows if r.name == "vaswani2017_base")
    assert base.gpu_hours == 96 and base.wall_clock_text == "12 h" and base.hardware == "8 x P100"
    luong = next(r for r in rows if r.name == "luong2015_seq2seq")
    assert luong.gpu_hours_range == (168.0, 240.0) and "Table 1" in luong.source
    assert all(r.sacrebleu is None and "sacrebleu" in r.null_reasons for r in rows)
    assert set(r.family for r in rows) <= set(families)
    experiments = Path(__file__).resolve().parents[2] / "configs" / "experiment"
    for row in rows:
        for exp in row.experiments:
            assert (experiments / f"{exp}.yaml").is_file(), exp


def test_report_writes_table_csv_and_plots(runs, tmp_path):
    out = tmp_path / "report"
    files = write_report([runs], out)
    for name in ("table.md", "table.csv", "bleu_vs_hours.png", "bleu_vs_gpu_hours.png", "throughput.png"):
        assert files[name].is_file() and files[name].stat().st_size > 0, name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = read_csv(out / "table.csv")
    assert list(rows[0]) == CSV_COLUMNS
    ours = {r["name"]: r for r in rows if r["kind"] == "ours"}
    published = {r["name"]: r for r in rows if r["kind"] == "published"}
    assert set(ours) == {"mini_transformer", "mini_seq2seq", "vaswani2017_base"}
    assert len(published) == 6
    t = ours["mini_transformer"]
    assert float(t["sacrebleu"]) == 31.25 and float(t["paper_bleu"]) == 32.75
    assert t["sacrebleu_signature"] == SIGNATURE and t["family"] == "transformer"
    assert t["gpu_hours"] == "" and t["gpu_util_mean"] == "" and t["accelerator"] == "cpu"
    assert float(t["device_hours"]) == pytest.approx(1 / 3) and float(t["mfu"]) == 0.12
    assert t["test_set"] == "multi30k/test2016 (1000 sent.)"
    assert ours["mini_seq2seq"]["family"] == "lstm_seq2seq"
    assert ours["vaswani2017_base"]["hardware"] == "8 x NVIDIA H100 80GB HBM3, bf16-mixed"
    assert float(ours["vaswani2017_base"]["gpu_hours"]) == 20.0
    assert float(published["vaswani2017_base"]["paper_bleu"]) == 27.3

    # Grouped by family, published rows first within each family.
    order = [(r["family"], r["kind"], r["name"]) for r in rows]
    assert order.index(("transformer", "published", "vaswani2017_base")) < order.index(
        ("transformer", "ours", "mini_transformer"))
    assert order.index(("lstm_seq2seq", "ours", "mini_seq2seq")) < order.index(
        ("transformer", "published", "vaswani2017_base"))


def test_markdown_marks_missing_values_and_explains_them(runs, tmp_path):
    write_report([runs], tmp_path / "report")
    md = (tmp_path / "report" / "table.md").read_text(encoding="utf-8")
    assert "| " + " | ".join(MARKDOWN_HEADER) + " |" in md
    line = next(ln for ln in md.splitlines() if "**mini_transformer" in ln)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3].startswith("32.8") or cells[3].startswith("32.7")  # tok. BLEU, 1 decimal
    assert cells[4].startswith("31.2") or cells[4].startswith("31.3")  # sacreBLEU
    assert cells[6].startswith("n/a (CPU")  # GPU-hours of a CPU run
    assert cells[8].startswith("n/a [")  # GPU util of a CPU run, with its reason
    base = next(ln for ln in md.splitlines() if "**vaswani2017_base" in ln)
    assert "— [" in base  # test BLEU missing: dash + note number
    assert "test_sacrebleu unavailable in this test" in md  # the null reason as a note
    assert "no NVIDIA GPU (running on cpu)" in md
    assert SIGNATURE in md and "Which BLEU is which" in md
    assert "| 27.3 |" in md and "| 14.0 |" in md and "Luong et al. 2015, Table 1" in md
    assert "Test sets differ" in md


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
    from nmtbench.report import curves_from_tensorboard

    val, loss = curves_from_tensorboard(run)
    assert [(p["step"], round(p["hours"], 3), p["bleu"]) for p in val] == [(100, 0.05, 10.0), (200, 0.1, 20.0)]
    assert len(loss) == 2
    files = write_report([run], tmp_path / "report")
    assert "train_loss_vs_hours.png" in files


def test_cli_fails_on_an_invalid_results_file(tmp_path, capsys):
    run = tmp_path / "bad"
    run.mkdir()
    broken = make_results(run)
    del broken["steps"]
    (run / "results.json").write_text(json.dumps(broken), encoding="utf-8")
    assert main([str(run), "--out", str(tmp_path / "out")]) == 1
    assert "steps: missing" in capsys.readouterr().out
    # A missing run is skipped with --allow-missing (as reproduce_table.sh does).
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "out2"), "--allow-missing"]) == 0
