"""scripts/gpu_check.sh and its module: the CUDA-less answer, and every section on CPU (tiny)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer of a machine without CUDA")
def test_script_without_cuda_says_so_and_exits_zero(tmp_path):
    """Run from another directory: the script finds the top-level benchmarks/ package itself."""
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device" in proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"cuda": False, "torch": torch.__version__,
                                                                "measured": None}


def test_nvml_fields_filled():
    full = {"gpu_util_mean": 91.0, "gpu_mem_gb_max": 12.0, "gpu_mem_gb_mean": 11.0, "gpu_power_w_mean": 400.0}
    assert all(gpu_check.nvml_fields_filled(full).values())
    missing = {**full, "gpu_util_mean": None}
    missing.pop("gpu_power_w_mean")
    filled = gpu_check.nvml_fields_filled(missing)
    assert filled == {"gpu_util_mean": False, "gpu_mem_gb_max": True, "gpu_mem_gb_mean": True,
                      "gpu_power_w_mean": False}


@pytest.mark.slow
def test_every_section_runs_tiny_on_cpu(capsys, tmp_path):
    """The device override runs the whole check with tiny models: one JSON line, all sections."""
    sections = "transformer_base,lstm_attention,decode,seq_length,smoke"
    sources = tmp_path / "sources.en"  # the decode section's input, generated (no ../shared needed)
    sources.write_text("".join(" ".join(["word"] * (5 + 3 * i)) + "\n" for i in range(10)), encoding="utf-8")
    assert gpu_check.main(["--device", "cpu", "--tiny", "--steps", "2", "--batch-tokens", "64", "--input", str(sources),
                           "--sections", sections, "--compile-backend", "aot_eager"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["cuda"] is False and report["device"] == "cpu" and report["tiny"] is True
    for name in sections.split(","):
        assert "error" not in report[name], report[name]
    for mode in ("eager", "compiled"):
        run = report["transformer_base"][mode]
        assert run["tokens_per_s"] > 0 and 0 < run["mfu"] < 1
    assert report["lstm_attention"]["tokens_per_s"] > 0
    assert report["decode"]["sentences_per_s"] > 0 and report["decode"]["sentences"] == 8
    assert [r["length"] for r in report["seq_length"]["rows"]] == [10, 20]
    # the 2-step training run through scripts/train.py ran and wrote its results.json (the NVML
    # fields stay null without a GPU; on CUDA nvml_ok must be true)
    assert report["smoke"]["returncode"] == 0 and report["smoke"]["tokens_per_sec"] > 0
