"""The ``spineseg`` command: SCT-style segmentation from a terminal.

    spineseg tasks
    spineseg install TASK [--from PATH] [--trust]
    spineseg models {list,verify,remove} [TASK]
    spineseg segment TASK -i IMG [-o OUT] [-thr F] [-largest {0,1}] [-fill-holes {0,1}]
                     [-remove-small N[vox|mm3] ...] [-test-time-aug] [-profile P]
                     [-device D]
                     [--model FOLDER_OR_ZIP --trust]
    spineseg batch TASK -i IMG [IMG ...] [-o OUTDIR] [--workers N] [--threads N]
                   [--scheduler ADDRESS] [SCT flags as segment] [--model FOLDER_OR_ZIP --trust]
    spineseg batch TASK -i BIDS_ROOT [-o DERIV] [--pattern GLOB] [--overwrite] [--qc QCDIR]
    spineseg batch --status DERIV
    spineseg qc DERIV -o QCDIR
    spineseg demo [--out DIR]

Flags follow ``sct_deepseg`` so that SCT users can switch without relearning. Exit codes:
0 success, 1 a problem the user can fix (the message says how; no traceback), 2 usage
error (a malformed command line: unknown option, a value out of range), 130 cancelled
(Ctrl-C). Nothing the user types ends in a traceback: an unexpected exception is a bug,
reported in one line that says how to report it; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import __version__
from .errors import Cancelled, GeometryWarning, SpinesegError
from .progress import Progress

if TYPE_CHECKING:  # pragma: no cover
    from .options import RunOptions

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130
# The user guide: help text points here, never to files of the source tree (a wheel has none).
DOCS_URL = "https://napari-spineseg.github.io/napari-spineseg/"


class TextProgress:
    """A one-line progress bar on stderr (redrawn in place on a terminal, else sparse)."""

    def __init__(self, stream=None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = ""
        self._last_t = 0.0

    def __call__(self, p: Progress) -> None:
        filled = int(round(self.width * max(0.0, min(1.0, p.fraction))))
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"[{bar}] {100 * p.fraction:5.1f}% {p.stage}"
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + line[:120].ljust(len(self._last)))
            self._last = line[:120]
        elif p.stage != self._last or now - self._last_t > 5 or p.fraction >= 1.0:
            self.stream.write(line + "\n")
            self._last, self._last_t = p.stage, now
        self.stream.flush()

    def done(self) -> None:
        if self.tty and self._last:
            self.stream.write("\n")
            self.stream.flush()
        self._last = ""


EXIT_STATUS = """\
exit status: 0 done, 1 a problem you can fix (the message says how), 2 wrong usage,
130 cancelled (Ctrl-C; nothing is left half-written). Add --debug to any command to see
the traceback of an error."""

SEGMENT_DESCRIPTION = """\
Segment one or more NIfTI images with a task's model and write the task's masks with
sct_deepseg's file names, on the image's exact grid (the header geometry is copied byte
for byte, so FSLeyes, ITK-SNAP, 3D Slicer and SCT overlay them exactly). Each mask is
written atomically with a JSON sidecar (model, release, settings); a mask it replaces is
kept under .spineseg-history/. The source image is never modified."""

SEGMENT_EPILOG = f"""\
examples:
  spineseg segment lesion_sci_t2 -i sub-01_T2w.nii.gz
      writes sub-01_T2w_sc_seg.nii.gz and sub-01_T2w_lesion_seg.nii.gz next to the image
  spineseg segment lesion_sci_t2 -i sub-01_T2w.nii.gz -o derivatives/sub-01_T2w.nii.gz
      writes derivatives/sub-01_T2w_sc_seg.nii.gz and derivatives/sub-01_T2w_lesion_seg.nii.gz
  spineseg segment gm_sc_7t_t2star -i t2s.nii.gz -thr 0.7 -remove-small 10vox
  spineseg segment lesion_sci_t2 -i sub-*_T2w.nii.gz -largest 1 -fill-holes 1 -device cuda:1
  spineseg segment spine -i t2.nii.gz -label-vert 1
  spineseg segment --model ~/models/Dataset123_Cord/nnUNetTrainer__nnUNetPlans__3d_fullres \\
      --trust -i t2.nii.gz
      your lab's nnU-Net v2 model: one <image>_<label>_seg.nii.gz per label of its dataset.json

Install a task's model first: `spineseg install TASK` (`spineseg tasks` shows what is
installed). Task details and post-processing defaults: {DOCS_URL}tasks/

{EXIT_STATUS}"""

BATCH_EPILOG = f"""\
examples:
  spineseg batch lesion_sci_t2 -i data/sub-*/anat/*_T2w.nii.gz -o derivatives/spineseg
  spineseg batch gm_sc_7t_t2star -i *.nii.gz --workers 4 --threads 2
  spineseg batch lesion_sci_t2 -i scans/*.nii.gz --scheduler tcp://head-node:8786
  spineseg batch lesion_sci_t2 -i BIDS_ROOT --cluster slurm --workers 8 --threads 4 \\
      --slurm-partition short --slurm-memory 16GB
  spineseg batch --model my_nnunet_folder --trust -i scans/*.nii.gz -largest 1

One line per file on stderr as it finishes (-q: none), a summary table on stdout. A file
that fails is reported with its reason and the others are still segmented; the exit
status is then 1. Details: {DOCS_URL}batch/

{EXIT_STATUS}"""


def _threshold(text: str) -> float:
    """argparse type of -thr: a probability in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _positive_int(text: str) -> int:
    """argparse type of --workers/--threads: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1")
    return value


def _min_size(text: str) -> str:
    """argparse type of each -remove-small value: checked, then kept as typed."""
    from .postprocess import parse_remove_small

    try:
        parse_remove_small([text])
    except SpinesegError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("-remove-small: ")) from None
    return text


def _device(text: str) -> str:
    """argparse type of -device: auto|cpu|cuda|cuda:N|mps, checked before torch loads."""
    from .engines.base import check_device

    try:
        return check_device(text)
    except SpinesegError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _task_help() -> str:
    from . import catalog

    ids = ", ".join(t.id for t in catalog.tasks())
    return (
        f"the task to run: {ids}, or its SCT 6.x name (`spineseg tasks` lists them with "
        "their output files and whether their model is installed). Leave it out with "
        "--model to run your own model with the classes of its dataset.json"
    )


def _parser() -> argparse.ArgumentParser:
    from .study import commands as cohort_commands
    from .study.clusters import add_cluster_arguments

    # --debug is accepted before and after the command (`spineseg --debug segment ...` or
    # `spineseg segment ... --debug`); SUPPRESS keeps a subcommand from resetting it
    debug = argparse.ArgumentParser(add_help=False)
    _add_debug(debug, default=argparse.SUPPRESS)
    p = argparse.ArgumentParser(
        prog="spineseg",
        description="Spinal-cord segmentation with the Spinal Cord Toolbox's sct_deepseg "
        "models:\ninstall a task's model, segment NIfTI images, write SCT-named masks.",
        epilog="examples:\n"
        "  spineseg tasks\n"
        "  spineseg install lesion_sci_t2\n"
        "  spineseg segment lesion_sci_t2 -i sub-01_T2w.nii.gz\n"
        "  spineseg segment --help          (every option, with examples)\n\n" + EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_debug(p, default=False)
    p.add_argument("--version", action="version", version=f"napari-spineseg {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        kwargs.setdefault("description", kwargs.get("help"))
        return sub.add_parser(
            name, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[debug], **kwargs
        )

    command("tasks", help="list the tasks, their outputs and whether they are installed")

    ins = command(
        "install",
        help="install a task's model (download or --from PATH)",
        epilog="examples:\n"
        "  spineseg install lesion_sci_t2\n"
        "  spineseg install lesion_sci_t2 --from model_SCIsegV2_r20240729.zip\n"
        "  spineseg install my_cord --from Dataset123_Cord.zip --trust\n\n" + EXIT_STATUS,
    )
    ins.add_argument(
        "task",
        help="a task id or SCT 6.x name (see `spineseg tasks`); with --from, any other name "
        "installs your own nnU-Net model under that name",
    )
    ins.add_argument(
        "--from",
        dest="source",
        nargs="+",
        metavar="PATH",
        help="install offline from release zip(s), a model folder, or a URL",
    )
    ins.add_argument(
        "--trust",
        action="store_true",
        help="accept a model whose hash is not pinned (checkpoints are pickles: "
        "only for models from people you trust)",
    )
    ins.add_argument("--force", action="store_true", help="reinstall even if installed")

    mod = command("models", help="list, verify or remove installed models")
    mod.add_argument("action", choices=["list", "verify", "remove"])
    mod.add_argument("task", nargs="?", help="task (verify/remove; verify: all if omitted)")

    seg = command(
        "segment",
        help="segment an image and write SCT-named masks",
        description=SEGMENT_DESCRIPTION,
        epilog=SEGMENT_EPILOG,
    )
    seg.add_argument("task", nargs="?", help=_task_help())
    seg.add_argument(
        "-i",
        dest="input",
        required=True,
        nargs="+",
        metavar="IMG",
        help="image(s) to segment: .nii or .nii.gz files, 2D, 3D or 4D (a 4D series is "
        "averaged over its 4th axis first). Several images are segmented one after the "
        "other with the model loaded once, each getting its own masks",
    )
    seg.add_argument(
        "-o",
        dest="output",
        metavar="OUT",
        help="output file name, as sct_deepseg -o. A task with one output file writes OUT "
        "itself; with several, each file's suffix replaces OUT's extension (-o sub-01.nii.gz "
        "-> sub-01_sc_seg.nii.gz, sub-01_lesion_seg.nii.gz). An existing folder receives "
        "<image name><suffix>.nii.gz. Default: next to the image, <image name><suffix>.nii.gz. "
        "Only with a single -i image",
    )
    _add_sct_flags(seg, device="auto")

    bat = command(
        "batch",
        help="segment many images in parallel on a dask cluster",
        description="Segment many images in parallel on a dask.distributed cluster (a local "
        "one by default): each file runs exactly `spineseg segment` (same names, sidecars, "
        "atomic writes), each worker process keeps its model loaded between files.",
        epilog=BATCH_EPILOG,
    )
    bat.add_argument("task", nargs="?", help=_task_help())
    bat.add_argument(
        "-i",
        dest="input",
        nargs="+",
        metavar="IMG_OR_BIDS_ROOT",
        help="the images to segment (.nii / .nii.gz; shell wildcards welcome), or one BIDS "
        "dataset folder (the task's contrast is found under sub-*/[ses-*/]anat; see --pattern)",
    )
    bat.add_argument(
        "-o",
        dest="output",
        metavar="OUTDIR",
        help="folder for every mask, <image name><suffix>.nii.gz (created if needed; two "
        "images with the same name are refused). Default: next to each image",
    )
    bat.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="worker processes of the local cluster (default: cores / --threads, at most "
        "one per file); each worker segments one file at a time",
    )
    bat.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        metavar="N",
        help="CPU threads each worker gives inference (default: 1); keep workers x threads "
        "<= cores",
    )
    bat.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="use a running dask scheduler (e.g. tcp://head-node:8786) instead of a local cluster",
    )
    _add_sct_flags(bat, device="cpu")
    cohort_commands.add_batch_arguments(bat)
    add_cluster_arguments(bat)
    cohort_commands.add_qc_parser(sub)

    demo = command("demo", help="run the demo on a synthetic phantom")
    demo.add_argument("--out", metavar="DIR", help="folder for the demo files")

    sub.add_parser(
        "doctor",
        help="report versions, torch build, devices, Qt, models (paste into a bug report)",
    )
    return p


def _add_debug(p: argparse.ArgumentParser, default: object) -> None:
    p.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show the full traceback of an error (for bug reports) and debug logging",
    )


def _add_sct_flags(p: argparse.ArgumentParser, device: str) -> None:
    """sct_deepseg's post-processing/inference flags, shared by segment and batch."""
    from .options import PROFILES

    p.add_argument(
        "-thr",
        dest="threshold",
        type=_threshold,
        metavar="F",
        help="binarization threshold in [0, 1] for models that output probabilities (the "
        "7T task gm_sc_7t_t2star, default 0.5: voxels >= F become 1). 0 skips the "
        "binarization step of the post-processing, as in SCT (SCT then writes soft values; "
        "the masks here are label files, cut at 0.5). nnU-Net tasks predict labels "
        "directly: there it does not apply",
    )
    p.add_argument(
        "-largest",
        type=int,
        choices=[0, 1],
        help="1: keep only the largest connected object of each output (per class in a "
        "multi-label file), to drop false positives away from the cord; 0: keep all. "
        f"Default: the task's own ({DOCS_URL}tasks/)",
    )
    p.add_argument(
        "-fill-holes",
        dest="fill_holes",
        type=int,
        choices=[0, 1],
        help="1: fill holes inside each object (3x3x3 structure, 3D, as SCT); 0: leave them. "
        "Default: the task's own",
    )
    p.add_argument(
        "-remove-small",
        dest="remove_small",
        nargs="+",
        type=_min_size,
        metavar="N[vox|mm3]",
        help="remove objects smaller than N voxels (N or Nvox) or N cubic millimetres (Nmm3), "
        "18-connected. One value for every output, or one per output file / class, with the "
        "unit written once on the last value as in SCT: -remove-small 10 20vox. Default: the "
        "task's own (3 voxels for the 7T task, none for the others)",
    )
    p.add_argument(
        "-test-time-aug",
        dest="tta",
        action="store_true",
        help="test-time augmentation: nnU-Net also predicts the mirrored image(s) and "
        "averages (slower, up to 8x in 3D; sometimes more robust). nnU-Net tasks only",
    )
    p.add_argument(
        "-sct-compat",
        dest="sct_compat",
        action="store_true",
        help="Reproduce sct_deepseg's voxels where our defaults differ: on multi-label "
        "outputs (rootlets, spine) -largest/-remove-small treat all labels as one object "
        "(default: per label) and -fill-holes needs -thr; -thr binarises nnU-Net outputs "
        "with '> thr' (default: ignored); -thr 0 on gm_sc_7t_t2star gives SCT 7.3's "
        "all-ones masks (default: soft); -remove-small values that SCT refuses are an "
        f"error. See {DOCS_URL}tasks/",
    )
    p.add_argument(
        "-label-vert",
        dest="label_vert",
        type=int,
        choices=[0, 1],
        default=0,
        help="spine (TotalSpineSeg) only: 1 also runs step 2, which labels every vertebra "
        "and disc individually (default 0: step 1 only)",
    )
    p.add_argument(
        "-profile",
        dest="profile",
        choices=list(PROFILES),
        default="sct",
        help="inference profile: sct (default) runs the model as sct_deepseg does; fast "
        "runs nnU-Net's first fold only with less tile overlap (step 0.75), for a quicker "
        "first look that may differ slightly from SCT's masks (said in the notes and the "
        "sidecar). The 7T and spine tasks ignore it",
    )
    p.add_argument(
        "-device",
        default=device,
        type=_device,
        metavar="D",
        help="where the model runs: auto (CUDA if available, else Apple MPS, else CPU), cpu, "
        "cuda, cuda:N (the Nth GPU, from 0) or mps. A GPU out-of-memory error falls back to "
        f"the CPU with a message. Default: {device}",
    )
    p.add_argument(
        "--model",
        metavar="FOLDER_OR_ZIP",
        help="an nnU-Net v2 model of your own (a folder with dataset.json, plans.json and "
        "fold_N/checkpoint_*.pth, or its zip). Without TASK its dataset.json labels decide "
        "the output files (SCT's rule); with TASK it replaces that task's model and keeps "
        "the task's outputs. Needs --trust",
    )
    p.add_argument(
        "--trust",
        action="store_true",
        help="run --model although its checkpoints are Python pickles, which can run any "
        "code: only for models from people you trust",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bar (the written file names and any error are still printed)",
    )


# ----------------------------------------------------------------------------- commands


def _cmd_tasks(_args, out) -> int:
    from . import catalog
    from .models import is_installed

    out.write(f"{'TASK':<18} {'INSTALLED':<9} {'OUTPUTS':<46} DESCRIPTION\n")
    for t in catalog.tasks():
        outs = " ".join(o.suffix for o in t.outputs)
        mark = "yes" if is_installed(t) else "no"
        out.write(f"{t.id:<18} {mark:<9} {outs:<46} {t.title}\n")
        if t.aliases:
            out.write(f"{'':<18} {'':<9} (SCT 6.x name: {', '.join(t.aliases)})\n")
    out.write(f"\nInstall with `spineseg install TASK`; details: {DOCS_URL}tasks/\n")
    return EXIT_OK


def _cmd_install(args, out, bar) -> int:
    from . import catalog
    from .catalog import TaskError
    from .models import install

    source = args.source
    if source is not None and len(source) == 1:
        source = source[0]
    try:
        spec = catalog.get_task(args.task)
    except TaskError:
        if not args.source:
            raise
        # an unknown name with --from: install a custom nnU-Net model under that name
        # (trust is checked before anything of the archive is read)
        from .models.store import custom_install_spec

        path = source if isinstance(source, str) else source[0]
        spec = custom_install_spec(args.task, path, trust=args.trust)
    path = install(spec, source, progress=bar, trust=args.trust, force=args.force)
    bar.done()
    out.write(f"installed {spec.id} in {path}\n")
    return EXIT_OK


def _cmd_models(args, out) -> int:
    from .models import list_installed, remove, verify

    if args.action == "list":
        items = list_installed()
        if not items:
            out.write("no model installed\n")
        for m in items:
            state = "ok" if m.complete else "INCOMPLETE"
            pinned = "pinned" if m.source.get("pinned") else "unpinned"
            when = m.source.get("installed_at", "?")
            out.write(f"{m.task:<24} {state:<10} {pinned:<8} {when}  {m.path}\n")
        return EXIT_OK
    if args.action == "remove":
        if not args.task:
            raise SpinesegError("models remove: name the task to remove")
        if remove(args.task):
            out.write(f"removed {args.task}\n")
            return EXIT_OK
        raise SpinesegError(f"no model installed for {args.task!r}")
    tasks = [args.task] if args.task else [m.task for m in list_installed()]
    bad = 0
    for t in tasks:
        r = verify(t)
        out.write(f"{r.task}: {'ok' if r.ok else 'PROBLEMS'}\n")
        for prob in r.problems:
            out.write(f"  - {prob}\n")
        bad += not r.ok
    if bad:
        raise SpinesegError(
            f"{bad} model(s) failed verification; reinstall with `spineseg install TASK --force`"
        )
    return EXIT_OK


def _cmd_segment(args, out, bar) -> int:
    from . import api

    if args.task is None and args.model is None:
        raise SpinesegError("segment: give a TASK (see `spineseg tasks`) or --model FOLDER")
    if args.output and len(args.input) > 1:
        raise SpinesegError("-o names one output; with several -i images leave it out")
    if args.task is not None:  # an unknown task is reported before the files
        from . import catalog

        catalog.get_task(args.task)
    _check_inputs(args.input)
    options = run_options_from_args(args)  # e.g. -remove-small as a whole, before any model
    progress = None if args.quiet else bar
    for img in args.input:
        t0 = time.perf_counter()
        result = api.segment(img, options=options, progress=progress, return_probabilities=False)
        bar.done()
        for note in result.provenance.get("notes", []):
            sys.stderr.write(f"note: {note}\n")
        for path in api.save(result, args.output):
            out.write(f"{path}\n")
        sys.stderr.write(
            f"{img}: done in {time.perf_counter() - t0:.1f} s on {result.provenance['device']}\n"
        )
    return EXIT_OK


def _check_inputs(paths: Sequence[str]) -> None:
    """Refuse a missing, misnamed or broken -i file before any model is loaded (a typo in
    the 10th of 10 images must not cost nine segmentations first)."""
    from .io.checks import sniff

    for path in paths:
        sniff(path)  # header bytes only: NiftiError naming the file and the fix


def run_options_from_args(args: argparse.Namespace) -> RunOptions:
    """The one :class:`~napari_spineseg.options.RunOptions` of a ``segment`` or ``batch``
    command line (sct_deepseg's flags), validated before any file or model is read."""
    from .options import RunOptions

    return RunOptions(
        task=args.task,
        model=args.model,
        trust=args.trust,
        device=args.device,
        threshold=args.threshold,
        largest=None if args.largest is None else bool(args.largest),
        fill_holes=None if args.fill_holes is None else bool(args.fill_holes),
        remove_small=args.remove_small,
        test_time_aug=args.tta,
        label_vert=bool(args.label_vert),
        sct_compat=args.sct_compat,
        profile=args.profile,
    )


def _cmd_batch(args, out) -> int:
    from .study.clusters import batch_client

    if args.task is None and args.model is None:
        raise SpinesegError("batch: give a TASK (see `spineseg tasks`) or --model FOLDER")
    options = run_options_from_args(args)  # a bad option fails before any job is submitted
    with batch_client(args, len(args.input)) as client:
        return _segment_files(args, out, client, options)


def _segment_files(args, out, client, options: RunOptions) -> int:
    from .batch import segment_many, summary
    from .study.commands import terminal_progress

    items = segment_many(
        args.input,
        out_dir=args.output,
        options=options,
        client=client,
        n_workers=args.workers,
        threads_per_worker=args.threads,
        progress=None if args.quiet else terminal_progress(),
    )
    out.write(summary(items) + "\n")
    return EXIT_OK if all(it.ok for it in items) else EXIT_ERROR


def _cmd_demo(args, out) -> int:
    try:
        from . import demo
    except ImportError as exc:
        raise SpinesegError("the demo is not available in this version") from exc
    runner = getattr(demo, "main", None) or getattr(demo, "run", None)
    if runner is None:
        raise SpinesegError("the demo module has no entry point")
    rc = runner([args.out] if args.out else [])
    return int(rc or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``spineseg``; returns the exit code (see module docstring)."""
    parser = _parser()
    args = parser.parse_args(argv)  # argparse exits with 2 on usage errors
    out = sys.stdout
    bar = TextProgress()
    if args.debug:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return _run(args, out, bar)
    except (Cancelled, KeyboardInterrupt):
        bar.done()
        if args.command == "batch":
            sys.stderr.write(
                "spineseg: cancelled; masks of files that had finished are kept, "
                "no file was half-written\n"
            )
        else:
            sys.stderr.write("spineseg: cancelled; nothing was written\n")
        return EXIT_CANCELLED
    except SpinesegError as exc:
        return _fail(bar, f"error: {exc}", debug=args.debug)
    except BrokenPipeError:  # `spineseg tasks | head`: the reader left, nothing to say
        return EXIT_ERROR
    except MemoryError:
        return _fail(
            bar,
            "error: out of memory: the image (or the model) does not fit in this machine's "
            "memory; close other programs, or segment on a machine with more memory",
            debug=args.debug,
        )
    except OSError as exc:  # the system refused (permissions, disk full, missing folder)
        return _fail(bar, f"error: {_os_error(exc)}", debug=args.debug)
    except Exception as exc:
        return _fail(bar, _bug_report(exc), debug=args.debug)


def _run(args, out, bar) -> int:
    if args.command == "tasks":
        return _cmd_tasks(args, out)
    if args.command == "install":
        return _cmd_install(args, out, bar)
    if args.command == "models":
        return _cmd_models(args, out)
    if args.command == "segment":
        return _cmd_segment(args, out, bar)
    if args.command == "batch":
        from .study.commands import run_batch

        handled = run_batch(args, out)  # BIDS input or --status; else a file list
        return _cmd_batch(args, out) if handled is None else handled
    if args.command == "qc":
        from .study.commands import run_qc

        return run_qc(args, out)
    if args.command == "doctor":
        from .doctor import main as doctor

        return doctor(out)
    if args.command == "demo":
        return _cmd_demo(args, out)
    raise AssertionError(f"unknown command {args.command!r}")  # pragma: no cover


def _fail(bar: TextProgress, message: str, *, debug: bool) -> int:
    """Print ``spineseg: <message>`` (after the traceback with --debug); exit status 1.

    Called while the exception is being handled, so --debug prints its traceback.
    """
    bar.done()
    if debug:
        traceback.print_exc(file=sys.stderr)
    sys.stderr.write(f"spineseg: {message}\n")
    return EXIT_ERROR


def _os_error(exc: OSError) -> str:
    """``strerror: file`` of an OSError the operating system raised (no Python jargon)."""
    if exc.strerror and exc.filename is not None:
        files = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
        return f"{files}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def _bug_report(exc: BaseException) -> str:
    """One line for an exception no check anticipated: it is our bug, not the user's."""
    try:
        from .segmentation import CODE_URL

        tracker = f"{CODE_URL}/issues"
    except Exception:  # the bug may be a broken install: still say what to do
        tracker = "the napari-spineseg issue tracker"
    what = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line, whatever the message
    return (
        f"internal error ({what}). This is a bug in napari-spineseg {__version__}, not a "
        f"problem with your input: please report it at {tracker} with the command you ran "
        "and what it prints with --debug (the traceback)"
    )


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our warnings (GeometryWarning...) as ``spineseg: warning: ...``; others as usual."""
    if issubclass(category, GeometryWarning):
        (file or sys.stderr).write(f"spineseg: warning: {message}\n")
    else:
        (file or sys.stderr).write(
            warnings.formatwarning(message, category, filename, lineno, line)
        )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
