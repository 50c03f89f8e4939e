"""Property-based fuzzing of NIfTI loading on the real SCT example files (hypothesis).

Property, for every mutated file (see ``nifti_fuzz`` for the mutations): ``io.load``
either refuses it with a ``SpinesegError`` that names the file, or returns a Volume whose
geometry is finite and invertible; whatever loads is segmented by the shipped demo model,
saved with ``api.save`` and reloads with the source's geometry bytes and the result's
voxels. Each case runs in a worker process with a capped address space and a time limit.

Profiles (environment variable ``SPINESEG_FUZZ``):

* unset / ``ci``: fixed seed (``derandomize=True``), about 150 cases, well under a minute
  on one core; this is what CI runs.
* ``long``: random, 1000 cases per category (marked ``slow``), for local runs::

      SPINESEG_FUZZ=long PYTHONPATH=src nice python -m pytest -p no:randomly \\
          tests/test_fuzz_nifti.py

  ``scripts/fuzz_report.py`` runs the same cases and prints counts per outcome.

The SCT data are read from ``../shared/data/sct_testing_data`` (or ``$SPINESEG_SCT_DATA``);
without them the module is skipped with the reason.
"""

from __future__ import annotations

import os
import struct

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the 'testing' extra")
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import nifti_fuzz as nf  # noqa: E402

LONG = os.environ.get("SPINESEG_FUZZ", "ci").lower() == "long"
_COMMON = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    "print_blob": True,
}
settings.register_profile("spineseg-fuzz-ci", derandomize=True, **_COMMON)
settings.register_profile("spineseg-fuzz-long", derandomize=False, **_COMMON)
PROFILE = settings.get_profile("spineseg-fuzz-long" if LONG else "spineseg-fuzz-ci")
#: Cases per category: (CI, long).
EXAMPLES = {"header": (60, 1000), "truncate": (25, 1000), "bitflip": (30, 1000), "gzip": (25, 500)}

pytestmark = [pytest.mark.slow] if LONG else []


def _settings(category: str):
    return settings(PROFILE, max_examples=EXAMPLES[category][1 if LONG else 0])


@pytest.fixture(scope="module")
def seeds() -> dict[str, bytes]:
    found = nf.seed_files()
    if not found:
        pytest.skip(f"SCT example data not found in {nf.SCT_DATA}")
    return found


@pytest.fixture(scope="module")
def worker():
    with nf.Worker() as w:
        yield w


def _assert_no_bug(case: nf.Case, outcome: dict) -> None:
    assert outcome["kind"] != "bug", (
        f"[{case.category}] {case.seed}{case.suffix}: {case.description} -> {outcome['detail']}"
    )


def field_value(fmt: str, original):
    """A value for one header field: special, arbitrary, or near the original."""
    if fmt == "f":
        return st.one_of(
            st.sampled_from(nf.SPECIAL_FLOATS),
            st.floats(width=32),
            st.floats(-4, 4, width=32).map(lambda f: float(original) * f),
            st.floats(-1, 1, width=32).map(lambda d: float(original) + d),
        )
    lo, hi = nf.INT_RANGE[fmt]
    near = [v for v in (original - 1, original + 1, *nf.SPECIAL_INTS) if lo <= v <= hi]
    return st.one_of(st.sampled_from(near), st.integers(lo, hi))


@_settings("header")
@hypothesis.given(data=st.data())
def test_header_fields(seeds, worker, data):
    seed = data.draw(st.sampled_from([s for s in nf.HEADER_SEEDS if s in seeds]), label="seed")
    raw = seeds[seed]
    edits = []
    for _ in range(data.draw(st.integers(1, 3), label="fields")):
        index = data.draw(st.integers(0, len(nf.HEADER_FIELDS) - 1), label="field")
        _, offset, fmt = nf.HEADER_FIELDS[index]
        (original,) = struct.unpack_from("<" + fmt, raw, offset)
        edits.append((index, data.draw(field_value(fmt, original), label="value")))
    case = nf.header_case(seed, raw, edits, gz=data.draw(st.booleans(), label="gz"))
    _assert_no_bug(case, worker.check(case))


@_settings("truncate")
@hypothesis.given(
    seed=st.sampled_from(sorted([*nf.SEEDS, *nf.VARIANTS])),
    fraction=st.floats(0, 1),
    gz=st.booleans(),
)
def test_truncation(seeds, worker, seed, fraction, gz):
    hypothesis.assume(seed in seeds)
    case = nf.truncate_case(seed, seeds[seed], fraction, gz)
    _assert_no_bug(case, worker.check(case))


@_settings("bitflip")
@hypothesis.given(
    seed=st.sampled_from(sorted([*nf.SEEDS, *nf.VARIANTS])),
    positions=st.lists(st.floats(0, 1), min_size=1, max_size=8),
    in_header=st.booleans(),
    gz=st.booleans(),
)
def test_bit_flips(seeds, worker, seed, positions, in_header, gz):
    hypothesis.assume(seed in seeds)
    case = nf.bitflip_case(seed, seeds[seed], positions, in_header, gz)
    _assert_no_bug(case, worker.check(case))


@_settings("gzip")
@hypothesis.given(
    seed=st.sampled_from(sorted([*nf.SEEDS, *nf.VARIANTS])),
    kind=st.sampled_from(nf.GZIP_DAMAGE),
    where=st.floats(0, 1),
)
def test_gzip_damage(seeds, worker, seed, kind, where):
    hypothesis.assume(seed in seeds)
    case = nf.gzip_case(seed, seeds[seed], kind, where)
    _assert_no_bug(case, worker.check(case))


def test_worker_reports_the_oracle_outcomes(seeds, worker):
    """The harness itself: an intact seed segments, a cut header is refused by name."""
    seed = sorted(seeds)[0]
    intact = nf.header_case(seed, seeds[seed], [], gz=True)
    assert worker.check(intact)["kind"] == "segmented"
    cut = nf.truncate_case(seed, seeds[seed], 0.1, gz=False)
    outcome = worker.check(cut)
    assert outcome["kind"] == "refused" and "truncated" in outcome["detail"], outcome


#: Cases the fuzzer found, kept as fixed examples: (case builder, expected outcome).
REGRESSIONS = {
    # a 10 m slice thickness loaded, then took minutes to segment at 0.8 mm
    "pixdim 1e4 mm": (
        lambda seeds: nf.header_case("dmri", seeds["dmri"], [(_field("pixdim[2]"), 1e4)], False),
        "refused",
    ),
    # dim[0] 3 -> 2: a 2D image whose result has a trailing singleton axis
    "dim[0] bit flip": (
        lambda seeds: nf.bitflip_case(
            "t2", seeds["t2"], [(b + 0.5) / (348 * 8 - 1) for b in (320, 2017)], True, False
        ),
        "segmented",
    ),
}


def _field(name: str) -> int:
    return next(i for i, (n, _, _) in enumerate(nf.HEADER_FIELDS) if n == name)


@pytest.mark.parametrize("name", list(REGRESSIONS))
def test_cases_the_fuzzer_found(seeds, worker, name):
    build, expected = REGRESSIONS[name]
    if {"dmri", "t2"} - set(seeds):
        pytest.skip("needs the t2 and dmri seeds")
    case = build(seeds)
    outcome = worker.check(case)
    assert outcome["kind"] == expected, outcome
