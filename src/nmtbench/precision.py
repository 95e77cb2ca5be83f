"""The numeric precision a run uses on this machine, and the same one for decoding.

GPUs: the trainer config says (`bf16-mixed` on Ampere and newer, `16-mixed` on V100/P100).

CPUs differ. On those with native bf16 arithmetic (Intel AMX tiles, or AVX512-BF16 as on
Intel Cooper Lake / Sapphire Rapids and AMD Zen 4), oneDNN runs bf16 matmuls several times
faster than fp32 (docs/performance.md, "Precision on CPU"), so
`bf16-mixed` (autocast: bf16 matmuls, fp32 weights, optimizer and loss) trains faster. On
AVX2-only CPUs bf16 is emulated, about 100x slower than fp32. So:

- `trainer.precision: auto` (the `cpu` trainer's default): `bf16-mixed` where the CPU has
  native bf16, else `32-true`; the choice and its reason are logged at startup and the
  resolved value is what results.json records;
- `bf16-mixed` / `bf16-true` asked for explicitly on a CPU without native bf16 fall back to
  `32-true` with a warning (emulated bf16 would make a run ~100x slower); fp16 precisions
  always do on CPU (no fast fp16 matmul there).

Decoding uses the precision the weights were trained with (`decoding_context`): validation
decoding runs inside the trainer's precision context (`BleuCallback`), and `evaluate.py` /
`translate.py` with `precision=auto` decode in the checkpoint's training precision where the
device runs it natively (bf16-mixed: autocast), else in fp32.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import torch

log = logging.getLogger(__name__)

BF16 = ("bf16-mixed", "bf16-true", "bf16")
FP16 = ("16-mixed", "16-true", "16", "transformer-engine")
AUTO = "auto"


def cpu_native_bf16() -> tuple[bool, str]:
    """(whether this CPU computes bf16 natively, which feature or why not)."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if amx is not None and amx():
        return True, "AMX tiles"
    if avx512_bf16 is not None and avx512_bf16():
        return True, "AVX512-BF16"
    if amx is None and avx512_bf16 is None:  # an older torch: measure instead
        fp32, bf16 = _matmul_seconds(torch.float32), _matmul_seconds(torch.bfloat16)
        return bf16 < fp32, f"measured bf16 matmul {fp32 / bf16:.2f}x fp32"
    return False, "neither AMX nor AVX512-BF16 (bf16 is emulated, about 100x slower than fp32)"


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """(whether `device` computes bf16 natively, why): a CUDA GPU with bf16, or a CPU with AMX /
    AVX512-BF16 (`cpu_native_bf16`)."""
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ok, "the GPU supports bf16" if ok else "the GPU has no bf16"
    ok, why = cpu_native_bf16()
    return ok, (f"this CPU computes bf16 natively ({why})" if ok else f"this CPU has {why}")


def _matmul_seconds(dtype: torch.dtype, n: int = 512, repeats: int = 3) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return time.perf_counter() - start


def resolve_precision(requested: str, on_gpu: bool) -> tuple[str, str]:
    """(the Lightning precision to use, why) for `trainer.precision=requested`."""
    requested = str(requested)
    if on_gpu and requested != AUTO:
        return requested, "as configured"
    native, why = native_bf16(torch.device("cuda" if on_gpu else "cpu"))
    if on_gpu:
        return ("bf16-mixed", why) if native else ("16-mixed", f"{why}: fp16 with loss scaling")
    if requested == AUTO:
        return ("bf16-mixed", f"{why}: bf16 matmuls, fp32 weights") if native else ("32-true", why)
    if requested in BF16 and not native:
        return "32-true", f"trainer.precision={requested} was asked for, but {why}; training runs in 32-true instead"
    if requested in FP16:
        return "32-true", (f"trainer.precision={requested} needs a GPU (CPUs have no fast fp16 matmul); "
                           "training runs in 32-true instead")
    return requested, "as configured"


def decoding_precision(requested: str, device: torch.device, trained: str = "32-true") -> str:
    """What `evaluate.py` / `translate.py` decode in. `auto`: the precision the weights were
    trained (and validated) in, `trained`, where `device` runs it natively (bf16: a GPU with
    bf16, or a CPU with AMX / AVX512-BF16; fp16: a GPU); else fp32."""
    if requested != AUTO:
        return requested
    trained = str(trained)
    if trained in BF16:
        return "bf16-mixed" if native_bf16(device)[0] else "32-true"
    if trained in FP16 and device.type == "cuda":
        return "16-mixed"
    return "32-true"


@contextlib.contextmanager
def decoding_context(precision: str, device: torch.device) -> Iterator[None]:
    """Autocast for a mixed precision (`bf16-mixed`, `16-mixed`), nothing for the others."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


__all__ = ["AUTO", "cpu_native_bf16", "decoding_context", "decoding_precision", "native_bf16", "resolve_precision"]
