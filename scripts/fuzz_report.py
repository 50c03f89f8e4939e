"""Fuzz NIfTI loading on the SCT example files and print the outcomes per category.

Runs the cases of ``tests/test_fuzz_nifti.py`` (same seeds, mutations and oracle, from
``tests/nifti_fuzz.py``) drawn from a seeded random generator instead of hypothesis, so
that thousands of cases can be counted::

    PYTHONPATH=src:tests nice python scripts/fuzz_report.py --cases 800 --seed 1

Outcomes: ``segmented`` (loaded, segmented by the demo model, saved, reloaded
identically), ``refused`` (a NiftiError naming the file at load), ``model refused`` (a
SpinesegError from the model, e.g. a grid that resamples to nothing), ``bug`` (anything
else: a raw exception, a crash, a hang, a wrong reload). The exit code is 1 when a bug
was found; each one is printed with the mutation that caused it.
"""

from __future__ import annotations

import argparse
import collections
import struct
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import nifti_fuzz as nf  # noqa: E402

OUTCOMES = ("segmented", "refused", "model refused", "bug")


def _float_value(rng: np.random.Generator, original: float) -> float:
    pick = rng.integers(4)
    if pick == 0:
        return float(rng.choice(nf.SPECIAL_FLOATS))
    if pick == 1:  # any float32 bit pattern: NaN payloads, denormals, huge values
        return float(np.uint32(rng.integers(2**32)).view(np.float32))
    if pick == 2:
        return float(original) * float(rng.uniform(-4, 4))
    return float(original) + float(rng.uniform(-1, 1))


def _int_value(rng: np.random.Generator, fmt: str, original: int) -> int:
    lo, hi = nf.INT_RANGE[fmt]
    if rng.integers(2):
        near = [v for v in (original - 1, original + 1, *nf.SPECIAL_INTS) if lo <= v <= hi]
        return int(rng.choice(near))
    return int(rng.integers(lo, hi, endpoint=True))


def make_case(category: str, rng: np.random.Generator, seeds: dict[str, bytes]) -> nf.Case:
    names = [s for s in nf.HEADER_SEEDS if s in seeds] if category == "header" else sorted(seeds)
    seed = str(rng.choice(names))
    raw = seeds[seed]
    gz = bool(rng.integers(2))
    if category == "header":
        edits = []
        for _ in range(int(rng.integers(1, 4))):
            index = int(rng.integers(len(nf.HEADER_FIELDS)))
            _, offset, fmt = nf.HEADER_FIELDS[index]
            (original,) = struct.unpack_from("<" + fmt, raw, offset)
            value = _float_value(rng, original) if fmt == "f" else _int_value(rng, fmt, original)
            edits.append((index, value))
        return nf.header_case(seed, raw, edits, gz)
    if category == "truncate":
        return nf.truncate_case(seed, raw, float(rng.uniform()), gz)
    if category == "bitflip":
        positions = list(rng.uniform(size=int(rng.integers(1, 9))))
        return nf.bitflip_case(seed, raw, positions, bool(rng.integers(2)), gz)
    kind = str(rng.choice(nf.GZIP_DAMAGE))
    return nf.gzip_case(seed, raw, kind, float(rng.uniform()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200, help="cases per category")
    parser.add_argument("--seed", type=int, default=0, help="random seed (reproducible runs)")
    parser.add_argument("--categories", nargs="+", default=list(nf.CATEGORIES))
    parser.add_argument("--reasons", type=int, default=8, help="refusal reasons to list")
    args = parser.parse_args(argv)

    seeds = nf.seed_files()
    if not seeds:
        print(f"SCT example data not found in {nf.SCT_DATA}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    counts: dict[str, collections.Counter] = {c: collections.Counter() for c in args.categories}
    reasons: collections.Counter = collections.Counter()
    bugs: list[str] = []
    slowest = (0.0, "")
    t0 = time.perf_counter()
    with nf.Worker() as worker:
        for category in args.categories:
            for _ in range(args.cases):
                case = make_case(category, rng, seeds)
                outcome = worker.check(case)
                counts[category][outcome["kind"]] += 1
                if outcome["seconds"] > slowest[0]:
                    slowest = (outcome["seconds"], f"{case.seed}{case.suffix}: {case.description}")
                if outcome["kind"] == "bug":
                    bugs.append(
                        f"[{category}] {case.seed}{case.suffix}: {case.description}"
                        f"\n    -> {outcome['detail']}"
                    )
                elif outcome["kind"] in ("refused", "model refused"):
                    reasons[outcome["detail"].split(":")[0].split("(")[0][:70]] += 1
            print(f"{category}: done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    width = max(len(c) for c in args.categories) + 2
    print(
        f"\nNIfTI fuzz: {args.cases} cases per category, seed {args.seed}, "
        f"{time.perf_counter() - t0:.0f} s, slowest case {slowest[0]:.1f} s"
    )
    print("| category".ljust(width + 2) + " | tried | " + " | ".join(OUTCOMES) + " |")
    print(
        "|"
        + "-" * (width + 1)
        + "|------:|"
        + "|".join("-" * (len(o) + 1) + ":" for o in OUTCOMES)
        + "|"
    )
    total: collections.Counter = collections.Counter()
    for category, counter in counts.items():
        total.update(counter)
        cells = " | ".join(str(counter[o]).rjust(len(o)) for o in OUTCOMES)
        print(f"| {category.ljust(width)} | {sum(counter.values()):5d} | {cells} |")
    cells = " | ".join(str(total[o]).rjust(len(o)) for o in OUTCOMES)
    print(f"| {'total'.ljust(width)} | {sum(total.values()):5d} | {cells} |")
    print("\nMost frequent refusal reasons:")
    for reason, n in reasons.most_common(args.reasons):
        print(f"  {n:5d}  {reason}")
    if bugs:
        print(f"\n{len(bugs)} bug(s):")
        print("\n".join(bugs))
    return 1 if bugs else 0


if __name__ == "__main__":
    raise SystemExit(main())
