"""Peak FLOP/s per device (the MFU denominator) and MFU arithmetic.

MFU (model FLOPs utilisation, Chowdhery et al. 2022, PaLM appendix B) is

    mfu = achieved model FLOP/s per device / peak FLOP/s per device

where the achieved FLOPs are the model's analytic training FLOPs
(`model.flops_per_batch(src_lens, tgt_lens)`, forward + backward, useful work only, no
padding or recomputation) and the peak is the device's dense matmul throughput at the
precision the run computes in.

Peak values come, in this order, from:
1. configuration (`peak_flops_per_device` of `ThroughputCallback`),
2. the datasheet table below for NVIDIA H200/H100/A100/V100/P100 (dense, i.e. without the
   2:4 structured sparsity that NVIDIA's headline tensor-core numbers assume; those are
   halved here),
3. on CPU, a measurement: a ~1 s matmul benchmark (`measure_cpu_matmul_flops`) in the
   run's compute dtype (bf16 under bf16-mixed, else fp32) with the process's torch thread
   count. That is "achieved peak", not a datasheet number, so a
   CPU MFU says how close the model gets to a large matmul on the same cores.
Other GPUs fall back to Lightning's `get_available_flops` table (which mixes dense and
sparse numbers for some chips, so prefer configuring the value).
"""

from __future__ import annotations

import logging
import time

import torch

log = logging.getLogger(__name__)

TERA = 1e12

# Dense peak FLOP/s per GPU by chip and compute dtype ("tf32" = fp32 inputs on tensor cores).
# Sources (NVIDIA datasheets; values marked * there are with sparsity and are halved here):
#   H200: "NVIDIA H200 Tensor Core GPU" datasheet (2024): SXM FP32 67, TF32 989*, BF16/FP16 1979*;
#         NVL FP32 60, TF32 835*, BF16/FP16 1671*.
#   H100: "NVIDIA H100 Tensor Core GPU" datasheet (2023): SXM FP32 67, TF32 989*, BF16/FP16 1979*;
#         PCIe FP32 51, TF32 756*, BF16/FP16 1513*; NVL FP32 60, TF32 835*, BF16/FP16 1671*.
#         Dense SXM/PCIe values as printed in the "NVIDIA H100 Tensor Core GPU Architecture"
#         whitepaper (v1.04, Table 3): TF32 494.7/378, BF16/FP16 989.4/756. H200 = H100 SXM chip.
#   A100: "NVIDIA A100 Tensor Core GPU" datasheet (2021), SXM and PCIe, 40/80 GB:
#         FP32 19.5, TF32 156 (312*), BF16/FP16 312 (624*).
#   V100: "NVIDIA Tesla V100" datasheet (2018): SXM2 FP32 15.7, tensor FP16 125;
#         PCIe FP32 14, tensor FP16 112; V100S PCIe FP32 16.4, tensor FP16 130. No BF16/TF32.
#   P100: "NVIDIA Tesla P100" datasheet (2016): SXM2 (NVLink) FP32 10.6, FP16 21.2;
#         PCIe FP32 9.3, FP16 18.7. No tensor cores, no BF16/TF32.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "h200 sxm": {"fp32": 67 * TERA, "tf32": 494.7 * TERA, "bf16": 989.4 * TERA, "fp16": 989.4 * TERA},
    "h200 nvl": {"fp32": 60 * TERA, "tf32": 417.5 * TERA, "bf16": 835.5 * TERA, "fp16": 835.5 * TERA},
    "h100 sxm": {"fp32": 67 * TERA, "tf32": 494.7 * TERA, "bf16": 989.4 * TERA, "fp16": 989.4 * TERA},
    "h100 pcie": {"fp32": 51 * TERA, "tf32": 378 * TERA, "bf16": 756 * TERA, "fp16": 756 * TERA},
    "h100 nvl": {"fp32": 60 * TERA, "tf32": 417.5 * TERA, "bf16": 835.5 * TERA, "fp16": 835.5 * TERA},
    "a100": {"fp32": 19.5 * TERA, "tf32": 156 * TERA, "bf16": 312 * TERA, "fp16": 312 * TERA},
    "v100 sxm2": {"fp32": 15.7 * TERA, "fp16": 125 * TERA},
    "v100 pcie": {"fp32": 14 * TERA, "fp16": 112 * TERA},
    "v100s pcie": {"fp32": 16.4 * TERA, "fp16": 130 * TERA},
    "p100 sxm2": {"fp32": 10.6 * TERA, "fp16": 21.2 * TERA},
    "p100 pcie": {"fp32": 9.3 * TERA, "fp16": 18.7 * TERA},
}


def chip_key(device_name: str) -> str | None:
    """Map a CUDA/NVML device name to a `PEAK_FLOPS` key, or None if the chip is not in it.

    Examples: "NVIDIA H100 80GB HBM3" -> "h100 sxm", "NVIDIA H100 PCIe" -> "h100 pcie",
    "NVIDIA H200" -> "h200 sxm", "NVIDIA A100-SXM4-80GB" -> "a100",
    "Tesla V100-SXM2-16GB" -> "v100 sxm2", "Tesla P100-PCIE-16GB" -> "p100 pcie".
    """
    name = device_name.lower().replace("-", " ")
    if "h200" in name:
        return "h200 nvl" if "nvl" in name else "h200 sxm"
    if "h100" in name:
        if "nvl" in name:
            return "h100 nvl"
        if "pcie" in name:
            return "h100 pcie"
        return "h100 sxm"  # "H100 80GB HBM3" / "H100 SXM5 ..." are the SXM parts
    if "a100" in name:
        return "a100"
    if "v100s" in name:
        return "v100s pcie"
    if "v100" in name:
        return "v100 pcie" if "pcie" in name else "v100 sxm2"
    if "p100" in name:
        return "p100 pcie" if "pcie" in name else "p100 sxm2"
    return None


def compute_dtype(precision: str, tf32: bool = False) -> str:
    """The matmul dtype implied by a Lightning precision string.

    "bf16-mixed"/"bf16-true" -> "bf16", "16-mixed"/"16-true" -> "fp16", "64-true" -> "fp64",
    "32-true" -> "tf32" when `tf32` (Ampere+ with `torch.get_float32_matmul_precision()` not
    "highest") else "fp32". Transformer-Engine/int8 precisions are not covered ("fp32").
    """
    p = str(precision).lower()
    if p.startswith("bf16"):
        return "bf16"
    if p.startswith("16") or p in ("half", "fp16"):
        return "fp16"
    if p.startswith("64") or p == "double":
        return "fp64"
    return "tf32" if tf32 else "fp32"


def datasheet_peak_flops(device_name: str, dtype: str) -> tuple[float | None, str]:
    """(peak FLOP/s, description) from `PEAK_FLOPS`; (None, why) if the chip/dtype is unknown.

    A GPU without TF32 (V100, P100) asked for "tf32" gets its fp32 value.
    """
    key = chip_key(device_name)
    if key is None:
        return None, f"{device_name!r} is not in nmtbench.flops.PEAK_FLOPS"
    table = PEAK_FLOPS[key]
    if dtype == "tf32" and "tf32" not in table:
        dtype = "fp32"
    if dtype not in table:
        return None, f"{key} has no {dtype} datasheet value (unsupported or not tabulated)"
    return table[dtype], f"datasheet: {key} {dtype} dense"


def measure_cpu_matmul_flops(seconds: float = 1.0, n: int = 1024, dtype: torch.dtype = torch.float32) -> float:
    """Best achieved FLOP/s of an (n x n) @ (n x n) matmul in `dtype` on CPU within ~`seconds`.

    One warm-up matmul, then timed matmuls for ~`seconds`; 2 * n^3 FLOPs each. The fastest
    single matmul counts (a peak, not a mean: a momentarily busy core must not make the
    model's MFU exceed 1). Uses the current `torch.get_num_threads()`.
    """
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)  # warm-up (thread pool, caches)
    best, start = float("inf"), time.perf_counter()
    while True:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() - start >= seconds:
            break
    return 2.0 * n**3 / best


def _cuda_tf32_enabled(device: torch.device) -> bool:
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8 and torch.get_float32_matmul_precision() != "highest"


CPU_MEASURED = "measured: CPU"  # + " fp32 matmul" / " bf16 matmul"


def resolve_peak_flops(
    device: torch.device,
    precision: str,
    configured: float | None = None,
    cpu_benchmark_seconds: float = 1.0,
) -> tuple[float | None, str]:
    """Peak FLOP/s per device and where it came from (see the module docstring).

    Returns (None, reason) when it cannot be determined; the reason ends up in
    `results.json`'s `null_reasons`.
    """
    if configured is not None:
        return float(configured), "config"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        dtype = compute_dtype(precision, tf32=_cuda_tf32_enabled(device))
        peak, source = datasheet_peak_flops(name, dtype)
        if peak is not None:
            return peak, source
        from lightning.fabric.utilities.throughput import get_available_flops

        torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}.get(
            dtype, torch.float32
        )
        lightning_peak = get_available_flops(device, torch_dtype)
        if lightning_peak:
            return float(lightning_peak), f"lightning table: {name} {dtype}"
        return None, f"{source}; set callbacks.throughput.peak_flops_per_device"
    if device.type == "cpu":
        if cpu_benchmark_seconds <= 0:
            return None, "CPU benchmark disabled (cpu_benchmark_seconds <= 0) and no peak_flops_per_device"
        # bf16 matmuls under bf16-mixed, with their own (higher) peak
        name = "bf16" if compute_dtype(precision) == "bf16" else "fp32"
        peak = measure_cpu_matmul_flops(cpu_benchmark_seconds, dtype=torch.bfloat16 if name == "bf16" else torch.float32)
        log.info("CPU peak for MFU: %.3g FLOP/s (%s matmul benchmark, %d threads)", peak, name, torch.get_num_threads())
        return peak, f"{CPU_MEASURED} {name} matmul"
    return None, f"no peak FLOP/s known for device type {device.type!r}; set peak_flops_per_device"


def mfu(flops: float, seconds: float, num_devices: int, peak_flops_per_device: float | None) -> float | None:
    """Model FLOPs utilisation: `flops / (seconds * num_devices * peak)`; None if undefined."""
    if not peak_flops_per_device or seconds <= 0 or num_devices < 1:
        return None
    return flops / (seconds * num_devices * peak_flops_per_device)


__all__ = [
    "CPU_MEASURED",
    "PEAK_FLOPS",
    "chip_key",
    "compute_dtype",
    "datasheet_peak_flops",
    "measure_cpu_matmul_flops",
    "mfu",
    "resolve_peak_flops",
]
