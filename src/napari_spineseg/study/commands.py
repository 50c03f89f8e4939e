"""The cohort side of the ``spineseg`` command: ``batch`` over a BIDS dataset, ``--status``,
``qc``. ``cli.py`` only registers these arguments and calls :func:`run_batch` /
:func:`run_qc`; the plain file-list batch stays in ``cli.py``.

    spineseg batch TASK -i BIDS_ROOT [-o DERIV] [--pattern GLOB] [--overwrite] [--qc QCDIR]
                   [--cluster slurm --slurm-... (see clusters.py)]
    spineseg batch --status DERIV
    spineseg qc DERIV -o QCDIR
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..errors import SpinesegError
from ..progress import Progress

if TYPE_CHECKING:  # pragma: no cover
    from ..options import RunOptions

EXIT_OK, EXIT_ERROR = 0, 1


def add_batch_arguments(bat: argparse.ArgumentParser) -> None:
    """The BIDS options of ``spineseg batch``."""
    bat.add_argument(
        "--pattern",
        metavar="GLOB",
        help="BIDS input: images to take, relative to the dataset root "
        "(default: the task's contrasts, sub-*/[ses-*/]anat/*_<T2w|T1w|...>.nii.gz)",
    )
    bat.add_argument(
        "--overwrite",
        action="store_true",
        help="BIDS input: redo images whose masks are done (even corrected ones; the "
        "previous versions are kept in .spineseg-history)",
    )
    bat.add_argument(
        "--status",
        metavar="DERIV",
        help="print done / failed (why) / pending for the batch written into DERIV, and exit",
    )
    bat.add_argument("--qc", metavar="QCDIR", help="BIDS input: write the QC report there too")


def add_qc_parser(sub: Any) -> None:
    """``spineseg qc DERIV -o QCDIR``."""
    qc = sub.add_parser(
        "qc",
        help="write an HTML QC report of a derivatives folder (see the user guide: Cohort review)",
    )
    qc.add_argument("deriv", metavar="DERIV", help="derivatives folder written by spineseg batch")
    qc.add_argument("-o", dest="output", required=True, metavar="QCDIR", help="report folder")
    qc.add_argument("--jobs", type=int, default=2, metavar="N", help="parallel mosaic processes")


def is_bids_input(args: argparse.Namespace) -> bool:
    """One ``-i`` that is a folder: a BIDS dataset root."""
    return bool(args.input) and len(args.input) == 1 and Path(args.input[0]).is_dir()


def run_batch(args: argparse.Namespace, out: TextIO) -> int | None:
    """``--status`` or a BIDS batch; None when the input is a plain file list (cli.py's)."""
    from . import bids
    from .clusters import batch_client

    if args.status:
        out.write(bids.status_table(bids.status(args.status)) + "\n")
        return EXIT_OK
    if not args.input:
        raise SpinesegError("batch: give images or a BIDS dataset with -i, or --status DERIV")
    if not is_bids_input(args):
        for flag in ("pattern", "qc"):
            if getattr(args, flag):
                raise SpinesegError(
                    f"batch --{flag} needs a BIDS dataset folder as the only -i input"
                )
        return None
    if args.task is None and args.model is None:
        raise SpinesegError("batch: give a TASK (see `spineseg tasks`) or --model FOLDER")
    from ..cli import run_options_from_args

    progress = None if args.quiet else terminal_progress()
    summary = segment_bids(
        args.input[0],
        deriv=args.output,
        pattern=args.pattern,
        overwrite=args.overwrite,
        options=run_options_from_args(args),
        client=functools.partial(batch_client, args),
        n_workers=args.workers,
        threads_per_worker=args.threads,
        progress=progress,
    )
    out.write(summary.text + "\n")
    if args.qc:
        from .qc_report import write_report

        index = write_report(summary.deriv, args.qc)
        out.write(f"QC report: {index}\n")
    return EXIT_OK if not summary.failed else EXIT_ERROR


def terminal_progress(stream: TextIO | None = None) -> Callable[[Progress], None]:
    """A batch's progress printer for ``stream`` (default stderr): one line per file
    (``[3/40] sub-01_T2w.nii.gz: ok``) and, on a terminal, a tqdm bar below the lines
    with the overall count and the time left. Piped into a log file there is no bar:
    only the lines, which read well there.
    """
    out = stream if stream is not None else sys.stderr
    make_bar = None
    if out.isatty():
        with contextlib.suppress(ImportError):  # tqdm comes with nnunetv2; else lines only
            from tqdm import tqdm as make_bar
    bar = None

    def show(p: Progress) -> None:
        nonlocal bar
        line = f"[{p.step}/{p.total}] {p.stage}"
        if make_bar is None:
            out.write(line + "\n")
            out.flush()
            return
        if bar is None:
            bar = make_bar(total=p.total, file=out, unit="image", dynamic_ncols=True)
        bar.write(line, file=out)
        bar.update((p.step or 0) - bar.n)
        if p.total is not None and p.step == p.total:
            bar.close()

    return show


@dataclass
class BidsBatchSummary:
    """What a BIDS batch did (images relative to the dataset root): skipped (already
    done), segmented, failed (with the message)."""

    deriv: Path
    skipped: list[str]
    done: list[str]
    failed: dict[str, str]

    @property
    def text(self) -> str:
        lines = [f"FAILED  {rel}: {msg}" for rel, msg in self.failed.items()]
        lines.append(
            f"{len(self.done)} segmented, {len(self.failed)} failed, {len(self.skipped)} "
            f"skipped (already done; --overwrite to redo) -> {self.deriv}"
        )
        return "\n".join(lines)


def run_key_settings(options: RunOptions) -> dict[str, Any]:
    """The options that decide a cohort's masks, as the run key records them.

    ``RunOptions.as_dict`` without what the key holds elsewhere or what does not change
    the masks (task and model: the key's ``Task`` and ``ModelHash``; trust; the device)
    and without the profile when it is SCT's, so that keys written before profiles
    existed still match (``bids.run_key`` then drops None and False values).
    """
    settings = options.as_dict()
    for name in ("task", "model", "trust", "device"):
        settings.pop(name)
    if settings["profile"] == "sct":
        del settings["profile"]
    return settings


def segment_bids(
    root: str | Path,
    task: str | None = None,
    *,
    deriv: str | Path | None = None,
    model: str | Path | None = None,
    trust: bool | None = None,
    pattern: str | None = None,
    overwrite: bool = False,
    options: RunOptions | None = None,
    device: str | None = None,
    client: Any = None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    progress: Any = None,
) -> BidsBatchSummary:
    """Segment a BIDS dataset into ``deriv`` (default ``ROOT/derivatives/spineseg``),
    skipping images whose masks are done with the same run key (see :mod:`.bids`).

    The run is ``options`` with ``task``, ``model``, ``trust`` and ``device`` overriding
    it where given (as :func:`napari_spineseg.batch.segment_many`, which runs it).

    ``client``: as :func:`~napari_spineseg.batch.segment_many`'s, or a callable that takes
    the number of images to do and returns a context manager giving one (e.g.
    :func:`.clusters.batch_client`): opened only when images remain to do, so a re-run of
    a finished study submits no SLURM job.
    """
    from .. import catalog
    from ..batch import segment_many
    from ..options import run_options
    from . import bids

    if device is None and options is None:
        device = "cpu"  # segment_many's default: one model copy per worker process
    opts = run_options(options, task=task, model=model, trust=trust, device=device)
    raw = Path(root).expanduser().absolute()
    out = Path(deriv).expanduser().absolute() if deriv else raw / "derivatives" / "spineseg"
    model = opts.model
    if model is not None:
        spec = catalog.get_task(opts.task) if opts.task else catalog.custom_task(model)
    else:
        spec = catalog.get_task(opts.task)
    images = bids.discover(raw, spec, pattern)
    settings = run_key_settings(opts)
    key = json.loads(json.dumps(bids.run_key(spec, bids.model_hash(spec, model), settings)))
    plan = bids.Plan(raw, out, spec, tuple(images), key, model)
    todo, skipped = [], []
    for image in images:
        state = bids.image_state(plan, image, key)
        rel = image.relative_to(raw).as_posix()
        if overwrite or state in ("pending", "stale"):
            todo.append(image)
        else:
            skipped.append(rel)
    bids.write_dataset_description(out, raw, spec)
    plan.save()
    for image in todo:
        bids.remove_debris(plan.folder(image), bids.output_names(spec, image).values())
    if not todo:
        return BidsBatchSummary(out, skipped, [], {})
    opened = client(len(todo)) if callable(client) else contextlib.nullcontext(client)
    with opened as client_or_address:
        items = segment_many(
            todo,
            out_dir=[plan.folder(i) for i in todo],
            options=opts,
            client=client_or_address,
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            progress=progress,
            entry_extra=[{bids.RUN_KEY: key}] * len(todo),
            sidecar_extra=[{"Sources": [bids.source_uri(raw, i)]} for i in todo],
        )
    done = [it.path.relative_to(raw).as_posix() for it in items if it.ok]
    failed = {it.path.relative_to(raw).as_posix(): str(it.error) for it in items if not it.ok}
    bids.record_failures(out, failed, done, key)
    return BidsBatchSummary(out, skipped, done, failed)


def run_qc(args: argparse.Namespace, out: TextIO) -> int:
    """``spineseg qc DERIV -o QCDIR``."""
    from .qc_report import write_report

    index = write_report(args.deriv, args.output, jobs=args.jobs)
    out.write(f"{index}\n")
    return EXIT_OK
