"""Run every ``benchmarks/bench_*.py`` and print their tables.

Usage (from the repository root)::

    python -m benchmarks            # or: python benchmarks/run_all.py
    python -m benchmarks --quick    # fewer repeats (each bench must accept --quick)
    python -m benchmarks io engine  # only bench_io.py and bench_engine.py

Each benchmark runs in its own subprocess (fresh memory figures, no shared imports);
its output is printed as it comes. The exit status is non-zero when one of them failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover(names: list[str] | None = None) -> list[Path]:
    """``bench_*.py`` next to this file, alphabetical; ``names`` filters (``io`` -> bench_io)."""
    found = sorted(HERE.glob("bench_*.py"))
    if names:
        wanted = {n.removeprefix("bench_").removesuffix(".py") for n in names}
        missing = wanted - {p.stem.removeprefix("bench_") for p in found}
        if missing:
            raise SystemExit(f"no benchmark named {', '.join(sorted(missing))} in {HERE}")
        found = [p for p in found if p.stem.removeprefix("bench_") in wanted]
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run all napari-spineseg benchmarks.")
    ap.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    ap.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    args = ap.parse_args(argv)
    failed = []
    for script in discover(args.names):
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        print(f"\n{'=' * 78}\n# {script.name}\n{'=' * 78}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=HERE.parent).returncode
        print(f"\n[{script.name}: exit {rc}, {time.perf_counter() - t0:.0f} s]", flush=True)
        if rc:
            failed.append(script.name)
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
