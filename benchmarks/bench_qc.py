"""Benchmark of the QC report (napari_spineseg.study.qc_report): a 100-subject cohort.

Run: ``python benchmarks/bench_qc.py`` (100 subjects, about 1-2 min on 2 shared cores),
``--quick`` (20 subjects), ``--subjects N``, ``--jobs N`` (mosaic processes, default 2).

The cohort is synthetic and written without running a model: one T2w phantom per
subject (72x72x32 voxels, 0.7x0.7x2.5 mm, as the sample data) in ``sub-XXX/anat`` and, in
``derivatives/spineseg``, its cord and CSF masks (the phantom's truth, as the demo
model's two output files) with the sidecars and the batch plan ``spineseg batch`` writes.
Figures: the cold report (every mosaic drawn, ``--jobs`` processes), the same report
again (everything from the cache), and seconds per 10 subjects of the cold report. Goal
(issue 10): well under a minute per 10 subjects.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def make_cohort(root: Path, subjects: int) -> Path:
    """A BIDS dataset and its derivatives folder (as ``spineseg batch`` leaves it)."""
    import nibabel as nib
    import numpy as np

    from napari_spineseg import io, sidecar
    from napari_spineseg._sample_data import SAMPLE_AXCODES, SAMPLE_SHAPE, SAMPLE_ZOOMS
    from napari_spineseg.catalog import custom_task
    from napari_spineseg.demo import demo_model_folder
    from napari_spineseg.phantom import cord_phantom
    from napari_spineseg.study import bids

    spec = custom_task(demo_model_folder())
    deriv = root / "derivatives" / "spineseg"
    key = bids.run_key(spec, "synthetic", {})
    images = []
    for s in range(subjects):
        img, lab = cord_phantom(
            shape=SAMPLE_SHAPE, zooms=SAMPLE_ZOOMS, axcodes=SAMPLE_AXCODES, seed=s
        )
        image = root / f"sub-{s:03d}" / "anat" / f"sub-{s:03d}_T2w.nii.gz"
        image.parent.mkdir(parents=True)
        nib.save(img, image)
        images.append(image)
        vol = io.load(image)
        truth = np.asanyarray(lab.dataobj)
        names = bids.output_names(spec, image)
        for value, out in enumerate(spec.outputs, start=1):
            mask = bids.derivative_folder(deriv, image) / names[out.suffix]
            mask.parent.mkdir(parents=True, exist_ok=True)
            io.save_labels((truth == value).astype(np.uint8), mask, like=vol)
            sidecar.write(
                mask,
                {
                    "GeneratedBy": [{"Name": "napari-spineseg", bids.RUN_KEY: key}],
                    "Sources": [bids.source_uri(root, image)],
                },
            )
    bids.write_dataset_description(deriv, root, spec)
    bids.Plan(root, deriv, spec, tuple(images), key, str(demo_model_folder())).save()
    return deriv


def main(argv: list[str] | None = None) -> int:
    from napari_spineseg.study.qc_report import write_report

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="20 subjects")
    p.add_argument("--subjects", type=int, default=None)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args(argv)
    n = args.subjects or (20 if args.quick else 100)
    with tempfile.TemporaryDirectory(prefix="bench-qc-") as tmp:
        root = Path(tmp) / "ds"
        t0 = time.perf_counter()
        deriv = make_cohort(root, n)
        make_s = time.perf_counter() - t0
        qc_dir = Path(tmp) / "qc"
        t0 = time.perf_counter()
        write_report(deriv, qc_dir, jobs=args.jobs)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_report(deriv, qc_dir, jobs=args.jobs)
        cached = time.perf_counter() - t0
        size_mb = sum(f.stat().st_size for f in qc_dir.rglob("*") if f.is_file()) / 1e6
    rows = {
        "subjects": n,
        "rows (image x output)": 2 * n,
        "jobs": args.jobs,
        "cohort written (s)": round(make_s, 1),
        "report, cold (s)": round(cold, 1),
        "report, cached (s)": round(cached, 2),
        "cold s per 10 subjects": round(10 * cold / n, 2),
        "report size (MB)": round(size_mb, 1),
    }
    print("QC report benchmark (synthetic cohort, cord + CSF masks per subject)")
    for k, v in rows.items():
        print(f"  {k:<26} {v}")
    goal = rows["cold s per 10 subjects"] < 60
    print(f"  goal: < 60 s per 10 subjects -> {'met' if goal else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if goal else 1


if __name__ == "__main__":
    sys.exit(main())
