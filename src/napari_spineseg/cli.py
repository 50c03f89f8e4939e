"""The ``spineseg`` command: SCT-style segmentation from a terminal.

    spineseg tasks
    spineseg install TASK [--from PATH] [--trust]
    spineseg models {list,verify,remove} [TASK]
    spineseg segment TASK -i IMG [-o OUT] [-thr F] [-largest {0,1}] [-fill-holes {0,1}]
                     [-remove-small N[vox|mm3] ...] [-test-time-aug] [-device D]
                     [--model FOLDER_OR_ZIP --trust]
    spineseg batch TASK -i IMG [IMG ...] [-o OUTDIR] [--workers N] [--threads N]
                   [--scheduler ADDRESS] [SCT flags as segment] [--model FOLDER_OR_ZIP --trust]
    spineseg demo [--out DIR]

Flags follow ``sct_deepseg`` so that SCT users can switch without relearning. Exit codes:
0 success, 1 a problem the user can fix (the message says how; no traceback), 2 usage
error, 130 cancelled (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from . import __version__
from .errors import Cancelled, SpinesegError
from .progress import Progress

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spineseg",
        description="Spinal-cord segmentation with the Spinal Cord Toolbox's sct_deepseg models.",
    )
    p.add_argument("--version", action="version", version=f"napari-spineseg {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sub.add_parser("tasks", help="list the tasks, their outputs and whether they are installed")

    ins = sub.add_parser("install", help="install a task's model (download or --from PATH)")
    ins.add_argument("task")
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

    mod = sub.add_parser("models", help="list, verify or remove installed models")
    mod.add_argument("action", choices=["list", "verify", "remove"])
    mod.add_argument("task", nargs="?", help="task (verify/remove; verify: all if omitted)")

    seg = sub.add_parser("segment", help="segment an image and write SCT-named masks")
    seg.add_argument("task", nargs="?", help="task id or SCT name (see `spineseg tasks`)")
    seg.add_argument("-i", dest="input", required=True, nargs="+", metavar="IMG")
    seg.add_argument("-o", dest="output", metavar="OUT", help="output name (as sct_deepseg -o)")
    _add_sct_flags(seg, device="auto")

    bat = sub.add_parser(
        "batch", help="segment many images in parallel on a dask cluster (docs/batch.md)"
    )
    bat.add_argument("task", nargs="?", help="task id or SCT name (see `spineseg tasks`)")
    bat.add_argument("-i", dest="input", required=True, nargs="+", metavar="IMG")
    bat.add_argument(
        "-o",
        dest="output",
        metavar="OUTDIR",
        help="folder for every mask (default: next to each image)",
    )
    bat.add_argument("--workers", type=int, metavar="N", help="worker processes (local)")
    bat.add_argument("--threads", type=int, default=1, metavar="N", help="CPU threads per worker")
    bat.add_argument(
        "--scheduler", metavar="ADDRESS", help="use a running dask scheduler (tcp://host:8786)"
    )
    _add_sct_flags(bat, device="cpu")

    demo = sub.add_parser("demo", help="run the demo on a synthetic phantom")
    demo.add_argument("--out", metavar="DIR", help="folder for the demo files")
    return p


def _add_sct_flags(p: argparse.ArgumentParser, device: str) -> None:
    """sct_deepseg's post-processing/inference flags, shared by segment and batch."""
    p.add_argument("-thr", dest="threshold", type=float, metavar="F")
    p.add_argument("-largest", type=int, choices=[0, 1])
    p.add_argument("-fill-holes", dest="fill_holes", type=int, choices=[0, 1])
    p.add_argument("-remove-small", dest="remove_small", nargs="+", metavar="N[vox|mm3]")
    p.add_argument("-test-time-aug", dest="tta", action="store_true")
    p.add_argument(
        "-sct-compat",
        dest="sct_compat",
        action="store_true",
        help="Reproduce sct_deepseg's voxels where our defaults differ: on multi-label "
        "outputs (rootlets, spine) -largest/-remove-small treat all labels as one object "
        "(default: per label) and -fill-holes needs -thr; -thr binarises nnU-Net outputs "
        "with '> thr' (default: ignored); -thr 0 on gm_sc_7t_t2star gives SCT 7.3's "
        "all-ones masks (default: soft); -remove-small values that SCT refuses are an "
        "error. See docs/tasks.md.",
    )
    p.add_argument(
        "-label-vert",
        dest="label_vert",
        type=int,
        choices=[0, 1],
        default=0,
        help="spine: also run step 2 (one label per vertebra)",
    )
    p.add_argument("-device", default=device, help="auto|cpu|cuda|cuda:N|mps")
    p.add_argument("--model", metavar="FOLDER_OR_ZIP", help="your own nnU-Net v2 model")
    p.add_argument("--trust", action="store_true", help="trust --model (pickle checkpoints)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


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
    out.write("\nInstall with `spineseg install TASK`; details in docs/tasks.md.\n")
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
        from dataclasses import replace

        path = source if isinstance(source, str) else source[0]
        spec = replace(catalog.custom_task(path), id=args.task)
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
    progress = None if args.quiet else bar
    for img in args.input:
        t0 = time.perf_counter()
        result = api.segment(
            img,
            task=args.task,
            model=args.model,
            device=args.device,
            progress=progress,
            trust=args.trust,
            threshold=args.threshold,
            largest=None if args.largest is None else bool(args.largest),
            fill_holes=None if args.fill_holes is None else bool(args.fill_holes),
            remove_small=args.remove_small,
            test_time_aug=args.tta,
            return_probabilities=False,
            label_vert=bool(args.label_vert),
            sct_compat=args.sct_compat,
        )
        bar.done()
        for note in result.provenance.get("notes", []):
            sys.stderr.write(f"note: {note}\n")
        for path in api.save(result, args.output):
            out.write(f"{path}\n")
        sys.stderr.write(
            f"{img}: done in {time.perf_counter() - t0:.1f} s on {result.provenance['device']}\n"
        )
    return EXIT_OK


def _cmd_batch(args, out) -> int:
    from .batch import segment_many, summary

    if args.task is None and args.model is None:
        raise SpinesegError("batch: give a TASK (see `spineseg tasks`) or --model FOLDER")

    def progress(p: Progress) -> None:
        sys.stderr.write(f"[{p.step}/{p.total}] {p.stage}\n")
        sys.stderr.flush()

    items = segment_many(
        args.input,
        args.task,
        out_dir=args.output,
        model=args.model,
        trust=args.trust,
        device=args.device,
        client=args.scheduler,
        n_workers=args.workers,
        threads_per_worker=args.threads,
        threshold=args.threshold,
        largest=None if args.largest is None else bool(args.largest),
        fill_holes=None if args.fill_holes is None else bool(args.fill_holes),
        remove_small=args.remove_small,
        test_time_aug=args.tta,
        label_vert=bool(args.label_vert),
        sct_compat=args.sct_compat,
        progress=None if args.quiet else progress,
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
    try:
        if args.command == "tasks":
            return _cmd_tasks(args, out)
        if args.command == "install":
            return _cmd_install(args, out, bar)
        if args.command == "models":
            return _cmd_models(args, out)
        if args.command == "segment":
            return _cmd_segment(args, out, bar)
        if args.command == "batch":
            return _cmd_batch(args, out)
        if args.command == "demo":
            return _cmd_demo(args, out)
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
        bar.done()
        sys.stderr.write(f"spineseg: error: {exc}\n")
        return EXIT_ERROR
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return EXIT_USAGE  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
