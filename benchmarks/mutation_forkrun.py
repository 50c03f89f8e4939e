"""Run mutmut's mutants fast on a slow machine: collect once, fork per mutant (not in CI).

``mutmut run`` starts a pytest session per mutant. This pytest plugin collects the tests
once, maps each test to the mutated functions it reaches (one forked pass with mutmut's
``stats`` trampoline mode), then runs every mutant in a fork with only the tests that reach
its function, fastest first, stopping at the first failure. Verdicts are mutmut's: a mutant
is killed when a test that reaches it fails. Tests that fail unmutated are left out.

Usage, inside the ``mutants/`` tree that mutmut generated (see benchmarks/README.md,
"Mutation testing")::

    FORKRUN_OUT=res.json FORKRUN_MUTANTS=names.txt PYTHONPATH=src:$PWD/../benchmarks \\
      python -m pytest -p mutation_forkrun -p no:randomly -p no:cacheprovider \\
      -p no:napari --assert=plain -q tests/test_x.py

``res.json`` gets one entry per mutant: 1 killed, 0 survived, "none" (no test reaches
it), "timeout" or "crashN"; the run resumes from it. ``FORKRUN_PREIMPORT`` (comma-separated
modules, e.g. ``torch,napari.layers``) are imported once before forking;
``FORKRUN_TIMEOUT`` bounds one mutant (seconds, default 120).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from _pytest.runner import runtestprotocol


def _function_of(mutant: str) -> str:
    return mutant.rpartition("__mutmut_")[0]


def _run_items(items) -> bool:
    """Run the items in order; True as soon as one fails."""
    for i, item in enumerate(items):
        nxt = items[i + 1] if i + 1 < len(items) else None
        if any(r.failed for r in runtestprotocol(item, log=False, nextitem=nxt)):
            return True
    return False


def _in_fork(fn, timeout: float):
    """``("ok", fn())`` from a forked child (JSON through a pipe), or the failure."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: quiet, and never back into pytest's own loop
        os.close(read_end)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        try:
            os.write(write_end, json.dumps(fn()).encode())
            os._exit(0)
        except BaseException:  # noqa: BLE001 - reported as a crash by the parent
            os._exit(3)
    os.close(write_end)
    os.set_blocking(read_end, False)
    chunks: list[bytes] = []
    deadline = time.time() + timeout
    while True:
        with contextlib.suppress(BlockingIOError):
            chunks.append(os.read(read_end, 1 << 20))
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            while chunk := os.read(read_end, 1 << 20):
                chunks.append(chunk)
            os.close(read_end)
            code = os.waitstatus_to_exitcode(status)
            data = b"".join(chunks)
            return ("ok", json.loads(data)) if code == 0 and data else (f"crash{code}", None)
        if time.time() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_end)
            return ("timeout", None)
        time.sleep(0.02)


def _test_map(items) -> dict:
    """nodeid -> mutated functions reached, whether it failed unmutated, its duration."""
    import mutmut.mutation.trampoline as trampoline

    seen: set[str] = set()
    trampoline.record_trampoline_hit = lambda name, caller=None: seen.add(name)
    os.environ["MUTANT_UNDER_TEST"] = "stats"
    out = {}
    for i, item in enumerate(items):
        seen.clear()
        start = time.time()
        nxt = items[i + 1] if i + 1 < len(items) else None
        reports = runtestprotocol(item, log=False, nextitem=nxt)
        out[item.nodeid] = {
            "funcs": sorted(seen),
            "failed": any(r.failed for r in reports),
            "dur": time.time() - start,
        }
    return out


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    items = session.items
    for module in filter(None, os.environ.get("FORKRUN_PREIMPORT", "").split(",")):
        importlib.import_module(module)  # paid once here, not in every fork
    out_path = Path(os.environ["FORKRUN_OUT"])
    names = Path(os.environ["FORKRUN_MUTANTS"]).read_text().split()
    timeout = float(os.environ.get("FORKRUN_TIMEOUT", "120"))
    map_path = out_path.with_name(out_path.name + ".map.json")
    if map_path.exists():
        tests = json.loads(map_path.read_text())
    else:
        status, tests = _in_fork(lambda: _test_map(items), 3600)
        if status != "ok":
            raise RuntimeError(f"mapping the tests failed: {status}")
        failing = [k for k, v in tests.items() if v["failed"]]
        print(f"{len(tests)} tests; failing unmutated (left out): {failing}", file=sys.stderr)
        map_path.write_text(json.dumps(tests))
    by_id = {item.nodeid: item for item in items}
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    for name in names:
        if name in results:
            continue
        function = _function_of(name)
        reaching = [
            by_id[k]
            for k, v in sorted(tests.items(), key=lambda kv: kv[1]["dur"])
            if function in v["funcs"] and k in by_id and not v["failed"]
        ]
        start = time.time()
        if not reaching:
            results[name] = "none"
        else:

            def one(name=name, reaching=reaching):
                os.environ["MUTANT_UNDER_TEST"] = name
                for item in reaching:  # pass/fail is all that counts: no tracebacks
                    item.repr_failure = lambda *a, **k: "failed"
                    item._repr_failure_py = lambda *a, **k: "failed"
                return 1 if _run_items(reaching) else 0

            status, value = _in_fork(one, timeout)
            results[name] = value if status == "ok" else status
        out_path.write_text(json.dumps(results, indent=0))
        print(
            f"{name} {results[name]} {len(reaching)}t {time.time() - start:.1f}s",
            file=sys.stderr,
            flush=True,
        )
    return True
