"""The precision axis of the benchmarks that compare systems (train-throughput, decode).

Every system runs in each precision of `--precisions` on the same batches:
- `fp32`: no autocast;
- `bf16`: `torch.autocast(device, dtype=torch.bfloat16)` around the system's forward and loss
  (training) or its whole search (decoding), fp32 weights and optimizer: what the project's
  `bf16-mixed` does (`nmtbench.precision.decoding_context`, the context evaluation and
  translation decode in), the same for every system.
The default is `fp32,bf16` where the device computes bf16 natively (a CUDA GPU with bf16, or
a CPU with AMX / AVX512-BF16: `nmtbench.precision.native_bf16`), else `fp32` alone with
the reason: emulated bf16 is about 100x slower and would measure the emulation.
A system's best precision is the one with the higher median rate over rounds; the `*_best`
ratios compare each system at its own best precision, and a peer that runs as several
variants (MarianMT with HF's SDPA and with its eager attention) at its best variant too.
`ratios` computes every ratio as its median over rounds with its spread
(`benchmarks.timing.ratio_over_rounds`).
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Mapping, Sequence

import torch

from benchmarks.timing import ratio_over_rounds
from nmtbench.precision import decoding_context, native_bf16

PRECISIONS = ("fp32", "bf16")
LIGHTNING = {"fp32": "32-true", "bf16": "bf16-mixed"}  # the project's (Lightning's) names


def resolve(requested: str | None, device: torch.device) -> tuple[list[str], str | None]:
    """(the precisions to run, a one-line note or None) for `--precisions requested`
    (None: the default of the module docstring)."""
    native, why = native_bf16(device)
    if requested is None:
        if native:
            return list(PRECISIONS), None
        return ["fp32"], f"precisions: fp32 only, {why}; --precisions fp32,bf16 forces bf16"
    chosen = [p.strip() for p in requested.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PRECISIONS]
    if unknown or not chosen:
        raise SystemExit(f"--precisions: unknown {unknown or requested!r}; choose from {','.join(PRECISIONS)}")
    chosen = list(dict.fromkeys(chosen))
    if "bf16" in chosen and not native:
        return chosen, f"precisions: bf16 asked for, but {why}: its figures measure emulated bf16"
    return chosen, None


def context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast for `bf16` (as `bf16-mixed` trains and decodes), nothing for `fp32`."""
    return decoding_context(LIGHTNING[precision], device)


def best(rates: Mapping[str, Sequence[float]]) -> str:
    """The precision with the highest median rate over rounds (the first listed on a tie)."""
    return max(rates, key=lambda p: statistics.median(rates[p]))


def system_entry(per_precision: dict[str, dict], rate_key: str) -> dict:
    """A system's JSON entry: its figures per precision (`precision`), its `best_precision`
    (by the median of `rate_key`, one rate per round), and the fp32 figures at the top level,
    the keys of the fp32-only benchmarks, so their readers keep working."""
    entry: dict = {"precision": per_precision,
                   "best_precision": best({p: f[rate_key] for p, f in per_precision.items()})}
    if "fp32" in per_precision:
        entry.update({k: v for k, v in per_precision["fp32"].items() if k != rate_key})
    return entry


Peer = str | tuple[str, ...]  # a system, or the variants of one peer (e.g. its attention kernels)


def _variants(peer: Peer) -> tuple[str, ...]:
    """The peer's systems, first the peer as it comes (what the fp32 ratios compare)."""
    return (peer,) if isinstance(peer, str) else peer


def best_variant(systems: Mapping[str, dict], peer: Peer, rate_key: str) -> tuple[str, str] | None:
    """(system, precision): the variant of `peer` (a name, or a tuple of names) and precision
    with the highest median rate over rounds, each variant at its best precision; None when
    no variant ran."""
    present = [name for name in _variants(peer) if name in systems]
    if not present:
        return None

    def median(name: str) -> float:
        return statistics.median(systems[name]["precision"][systems[name]["best_precision"]][rate_key])

    name = max(present, key=median)  # the first listed on a tie
    return name, systems[name]["best_precision"]


def ratios(systems: Mapping[str, dict], pairs: Mapping[str, tuple[Peer, Peer]], with_best: Sequence[str],
           rate_key: str) -> dict[str, float | None]:
    """Each ratio `key` of `pairs` (numerator, denominator: a system, or a tuple of a peer's
    variants) as its median over rounds of the per-round rates `rate_key`, with
    `<key>_spread`: in fp32, the first variant of each side (the peer as it comes); for the
    keys in `with_best` also `<key>_best` (+ `_spread`), each side at its best variant and
    precision (`best_variant`). None where a system, or its run in that precision, is missing."""

    def rounds(choice: tuple[str, str] | None) -> list[float] | None:
        if choice is None or choice[0] not in systems:
            return None
        figures = systems[choice[0]]["precision"].get(choice[1])
        return figures[rate_key] if figures else None

    out: dict[str, float | None] = {}
    for key, (a, b) in pairs.items():
        for suffix in ("", "_best"):
            if suffix and key not in with_best:
                continue
            if suffix:
                ra, rb = rounds(best_variant(systems, a, rate_key)), rounds(best_variant(systems, b, rate_key))
            else:
                ra, rb = rounds((_variants(a)[0], "fp32")), rounds((_variants(b)[0], "fp32"))
            median, spread = ratio_over_rounds(ra, rb) if ra and rb else (None, None)
            out[key + suffix], out[f"{key}{suffix}_spread"] = median, spread
    return out


def ratio_lines(results: Mapping, pairs: Mapping[str, tuple[Peer, Peer]], with_best: Sequence[str],
                rate_key: str, labels: Mapping[str, str] | None = None, width: int = 32) -> list[str]:
    """One printed line per ratio of `ratios`: its label (`labels[key]`, else the key), value,
    spread, rounds and the systems and precisions compared."""
    systems, lines = results["systems"], []
    for key, (a, b) in pairs.items():
        for suffix in ("", "_best") if key in with_best else ("",):
            value, spread = results.get(key + suffix), results.get(f"{key}{suffix}_spread")
            label = (labels or {}).get(key + suffix, key + suffix)
            if value is None:
                lines.append(f"{label:{width}} n/a")
                continue
            if suffix:
                (na, pa), (nb, pb) = best_variant(systems, a, rate_key), best_variant(systems, b, rate_key)
                which = f"{na.split('/')[-1]} {pa} / {nb.split('/')[-1]} {pb}"
            else:
                na, which = _variants(a)[0], "fp32"
            n = len(systems[na]["precision"]["fp32" if not suffix else pa][rate_key])
            lines.append(f"{label:{width}} {value:.2f}x  (spread {spread:.0%} over {n} rounds; {which})")
    return lines


def add_argument(parser) -> None:
    parser.add_argument("--precisions", default=None,
                        help="comma-separated subset of fp32,bf16 (default: fp32,bf16 where the device "
                             "computes bf16 natively, else fp32)")


__all__ = ["LIGHTNING", "PRECISIONS", "Peer", "add_argument", "best", "best_variant", "context", "ratio_lines",
           "ratios", "resolve", "system_entry"]
