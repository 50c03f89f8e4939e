"""Fuzzing machinery for NIfTI loading: mutated SCT files, checked in a bounded worker.

Shared by ``tests/test_fuzz_nifti.py`` (hypothesis, CI and long profiles) and
``scripts/fuzz_report.py`` (counts per category). A case is a real SCT example file,
cropped small so the demo model segments it in a fraction of a second, then damaged:

* ``header``: one to three numeric fields of the 348-byte NIfTI-1 header set to an
  extreme, special (NaN, inf, -0, 1e38...) or perturbed value;
* ``truncate``: the file cut at any byte (header, extension flag, voxels, gzip stream);
* ``bitflip``: one to eight bits flipped in the header or anywhere in the file;
* ``gzip``: damage to the gzip stream (cut, flipped CRC/size trailer, garbage appended,
  a second member, corrupt deflate block).

The oracle (:func:`check_case`): ``io.load`` either refuses with a ``SpinesegError``
whose message names the file, or returns a Volume whose geometry is finite and
invertible; a loaded Volume is segmented with the shipped demo model (``api.segment``;
a ``SpinesegError`` from the model counts as a refusal with a reason), saved with
``api.save`` and reloaded: same geometry bytes as the source, same voxels as the result.
Anything else is a bug. Cases run in a worker process under ``RLIMIT_AS`` with a
per-case time limit, so a header that makes the loader allocate or loop is caught as a
bug instead of taking the machine down.
"""

from __future__ import annotations

import json
import math
import os
import select
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCT_DATA = (
    Path(os.environ.get("SPINESEG_SCT_DATA", Path(__file__).resolve().parents[2] / "shared/data"))
    / "sct_testing_data"
)

#: SCT example files used as seeds, with the crop kept (small: segmentation stays fast).
SEEDS = {
    "t2": ("t2/t2.nii.gz", (slice(26, 34), slice(20, 32), slice(20, 32))),
    "t2s": ("t2s/t2s.nii.gz", (slice(20, 32), slice(20, 32), slice(4, 10))),
    "dmri": ("dmri/dmri.nii.gz", (slice(10, 22), slice(10, 22), slice(0, 4), slice(0, 3))),
    "mt1": ("mt/mt1.nii.gz", (slice(20, 32), slice(20, 32), slice(0, 4))),
}
#: Re-encoded seeds for the byte-level mutations: (source seed, how it is written).
VARIANTS = {"t2-nifti2": ("t2", "nifti2"), "t2s-bigendian": ("t2s", "big-endian")}
#: Seeds whose header has the NIfTI-1 little-endian layout of HEADER_FIELDS.
HEADER_SEEDS = tuple(SEEDS)

#: (name, byte offset, struct format) of every numeric field of the NIfTI-1 header,
#: one entry per array element (dim[0]...dim[7], pixdim[0]...pixdim[7], srow_x[0]...).
HEADER_FIELDS: list[tuple[str, int, str]] = [
    ("sizeof_hdr", 0, "i"),
    ("extents", 32, "i"),
    ("session_error", 36, "h"),
    ("regular", 38, "B"),
    ("dim_info", 39, "B"),
    *[(f"dim[{i}]", 40 + 2 * i, "h") for i in range(8)],
    ("intent_p1", 56, "f"),
    ("intent_p2", 60, "f"),
    ("intent_p3", 64, "f"),
    ("intent_code", 68, "h"),
    ("datatype", 70, "h"),
    ("bitpix", 72, "h"),
    ("slice_start", 74, "h"),
    *[(f"pixdim[{i}]", 76 + 4 * i, "f") for i in range(8)],
    ("vox_offset", 108, "f"),
    ("scl_slope", 112, "f"),
    ("scl_inter", 116, "f"),
    ("slice_end", 120, "h"),
    ("slice_code", 122, "B"),
    ("xyzt_units", 123, "B"),
    ("cal_max", 124, "f"),
    ("cal_min", 128, "f"),
    ("slice_duration", 132, "f"),
    ("toffset", 136, "f"),
    ("glmax", 140, "i"),
    ("glmin", 144, "i"),
    ("qform_code", 252, "h"),
    ("sform_code", 254, "h"),
    ("quatern_b", 256, "f"),
    ("quatern_c", 260, "f"),
    ("quatern_d", 264, "f"),
    ("qoffset_x", 268, "f"),
    ("qoffset_y", 272, "f"),
    ("qoffset_z", 276, "f"),
    *[
        (f"srow_{r}[{i}]", 280 + 16 * k + 4 * i, "f")
        for k, r in enumerate("xyz")
        for i in range(4)
    ],
]

#: Values a fuzzer should always try for a float field (boundaries of the checks included).
SPECIAL_FLOATS = [
    0.0, -0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, 1e38, -1e38, 3.4028235e38, 1e-38,
    1e-45, 1e-7, 1e-3, 0.5, 2.0, 100.0, 1e4, 1e6, 1.0000003, 352.0, 351.0, 353.5,
]  # fmt: skip
SPECIAL_INTS = [0, 1, -1, 2, 3, 4, 5, 7, 8, 16, 127, 128, 255, 256, 348, 540, 1002, 32767, -32768]
INT_RANGE = {"h": (-32768, 32767), "i": (-(2**31), 2**31 - 1), "B": (0, 255)}

CATEGORIES = ("header", "truncate", "bitflip", "gzip")


# ----------------------------------------------------------------------------- seeds
def seed_files() -> dict[str, bytes]:
    """Uncompressed NIfTI-1 bytes of each SCT seed, cropped (header kept, dims updated)."""
    import nibabel as nib

    out = {}
    for name, (rel, crop) in SEEDS.items():
        src = SCT_DATA / rel
        if not src.exists():
            continue
        img = nib.load(str(src))
        data = np.asanyarray(img.dataobj)[crop]
        hdr = img.header.copy()
        hdr.set_data_shape(data.shape)
        hdr.extensions.clear()
        out[name] = _encode(hdr, data)
        for variant, (base, how) in VARIANTS.items():
            if base == name:
                if how == "nifti2":
                    out[variant] = _encode(nib.Nifti2Header.from_header(hdr), data)
                else:
                    out[variant] = _encode(hdr.as_byteswapped(">"), data)
    return out


def _encode(hdr, data: np.ndarray) -> bytes:
    """Single-file NIfTI bytes: header, empty extension flag, voxels in the header's order."""
    hdr = hdr.copy()
    offset = 352 if len(hdr.binaryblock) == 348 else 544
    hdr["vox_offset"] = offset
    voxels = np.asarray(data, hdr.get_data_dtype()).tobytes("F")  # header's byte order
    return hdr.binaryblock + b"\x00" * (offset - len(hdr.binaryblock)) + voxels


# ------------------------------------------------------------------------ mutations
@dataclass(frozen=True)
class Case:
    """One fuzz case: the bytes to write, the file name, and what was done."""

    category: str
    seed: str
    description: str
    payload: bytes
    suffix: str  # ".nii" or ".nii.gz"


def gzip_bytes(raw: bytes) -> bytes:
    import gzip

    return gzip.compress(raw, compresslevel=1, mtime=0)


def set_fields(raw: bytes, edits: list[tuple[int, object]]) -> bytes:
    """Overwrite header fields (little-endian seeds), by index into HEADER_FIELDS."""
    out = bytearray(raw)
    for index, value in edits:
        _, offset, fmt = HEADER_FIELDS[index]
        out[offset : offset + struct.calcsize(fmt)] = struct.pack("<" + fmt, value)
    return bytes(out)


def header_case(seed: str, raw: bytes, edits: list[tuple[int, object]], gz: bool) -> Case:
    payload = set_fields(raw, edits)
    what = ", ".join(f"{HEADER_FIELDS[i][0]}={v!r}" for i, v in edits)
    return Case("header", seed, what, gzip_bytes(payload) if gz else payload, _suffix(gz))


def truncate_case(seed: str, raw: bytes, fraction: float, gz: bool) -> Case:
    payload = gzip_bytes(raw) if gz else raw
    cut = int(fraction * (len(payload) - 1))
    return Case(
        "truncate", seed, f"cut at byte {cut} of {len(payload)}", payload[:cut], _suffix(gz)
    )


def bitflip_case(seed: str, raw: bytes, positions: list[float], in_header: bool, gz: bool) -> Case:
    """Flip bits of the uncompressed bytes (header only, or anywhere), then maybe gzip."""
    out = bytearray(raw)
    span = 348 * 8 if in_header else len(raw) * 8
    bits = sorted({int(p * (span - 1)) for p in positions})
    for bit in bits:
        out[bit // 8] ^= 1 << (bit % 8)
    payload = gzip_bytes(bytes(out)) if gz else bytes(out)
    where = "header" if in_header else "file"
    return Case("bitflip", seed, f"{where} bits {bits}", payload, _suffix(gz))


GZIP_DAMAGE = ("cut", "crc", "isize", "garbage", "second member", "deflate byte", "no trailer")


def gzip_case(seed: str, raw: bytes, kind: str, where: float) -> Case:
    good = gzip_bytes(raw)
    out = bytearray(good)
    if kind == "cut":
        out = out[: max(10, int(where * len(good)))]
    elif kind == "crc":
        out[-8] ^= 0xFF
    elif kind == "isize":
        out[-4:] = struct.pack("<I", int(where * 2**32) % 2**32)
    elif kind == "garbage":
        out += bytes(range(256))[: 1 + int(where * 255)]
    elif kind == "second member":
        out += gzip_bytes(raw[: int(where * len(raw))])
    elif kind == "deflate byte":
        pos = 10 + int(where * (len(good) - 19))
        out[pos] ^= 0x5A
    elif kind == "no trailer":
        out = out[:-8]
    return Case("gzip", seed, f"{kind} ({where:.3f})", bytes(out), ".nii.gz")


def _suffix(gz: bool) -> str:
    return ".nii.gz" if gz else ".nii"


# --------------------------------------------------------------------------- oracle
def check_case(path: Path, out_dir: Path) -> dict:
    """Load -> segment -> save -> reload one file; the outcome as a small dict.

    ``kind``: ``segmented`` (all steps passed), ``refused`` (NiftiError naming the file at
    load), ``model refused`` (a SpinesegError from segmentation, with its reason) or
    ``bug`` (anything else, with the traceback's last line).
    """
    import traceback
    import warnings

    from napari_spineseg import api
    from napari_spineseg.demo import demo_model_folder
    from napari_spineseg.errors import SpinesegError
    from napari_spineseg.io import load
    from napari_spineseg.io.writer import GEOMETRY_FIELDS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                volume = load(path)
            except SpinesegError as exc:
                if str(path) not in str(exc):
                    return {"kind": "bug", "detail": f"message does not name the file: {exc}"}
                return {"kind": "refused", "detail": str(exc)[len(str(path)) + 2 :][:200]}
            problem = _geometry_problem(volume)
            if problem:
                return {"kind": "bug", "detail": problem}
            try:
                result = api.segment(volume, model=demo_model_folder(), trust=True, device="cpu")
            except SpinesegError as exc:
                return {"kind": "model refused", "detail": str(exc)[:200]}
            written = api.save(result, out=out_dir / "fuzz_seg.nii.gz")
            for mask_path in written:
                suffix = mask_path.name[len("fuzz_seg") :].removesuffix(".nii.gz")
                labels = result.outputs[suffix].labels if suffix else None
                if labels is None:
                    labels = next(iter(result.outputs.values())).labels
                mask = load(mask_path)
                for name in GEOMETRY_FIELDS:
                    if _bits(mask.header[name]) != _bits(volume.header[name]):
                        return {"kind": "bug", "detail": f"mask {name} differs from the source"}
                if _bits(mask.header["pixdim"][:4]) != _bits(volume.header["pixdim"][:4]):
                    return {"kind": "bug", "detail": "mask pixdim differs from the source"}
                # a 2D source's result has a trailing singleton axis: same voxels
                labels = np.asarray(labels).reshape(volume.spatial_shape)
                if not np.array_equal(np.asarray(mask.data), labels):
                    return {"kind": "bug", "detail": "mask voxels differ after reload"}
                mask_path.unlink()
                mask_path.with_name(mask_path.name.removesuffix(".nii.gz") + ".json").unlink(
                    missing_ok=True
                )
            return {"kind": "segmented", "detail": f"shape {volume.shape}"}
    except BaseException as exc:  # the oracle's job: report, never crash the worker
        if isinstance(exc, KeyboardInterrupt):
            raise
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
        return {"kind": "bug", "detail": f"{last[:200]} at {where}"}


def _bits(value) -> bytes:
    arr = np.asarray(value)
    return arr.astype(arr.dtype.newbyteorder("=")).tobytes()


def _geometry_problem(volume) -> str | None:
    affine = np.asarray(volume.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        return "loaded with a non-finite affine"
    lin = affine[:3, :3]
    sizes = np.sqrt((lin**2).sum(axis=0))
    if np.any(sizes <= 0) or abs(np.linalg.det(lin)) <= 1e-12 * float(np.prod(sizes)):
        return f"loaded with a singular affine {lin.tolist()}"
    geometry = volume.geometry
    if not (np.all(np.isfinite(geometry.scale)) and np.all(np.asarray(geometry.scale) > 0)):
        return f"display scale {geometry.scale}"
    if not np.all(np.isfinite(geometry.translate)):
        return f"display translate {geometry.translate}"
    if tuple(volume.data.shape) != volume.shape:
        return f"data shape {volume.data.shape} != header shape {volume.shape}"
    return None


# --------------------------------------------------------------------------- worker
#: Address space of the worker beyond what it uses after warming up (torch, the model).
WORKER_EXTRA_BYTES = 2 << 30
#: Seconds one case may take in the worker (a few tenths are typical).
CASE_TIMEOUT_S = 60.0


class Worker:
    """A child process that runs :func:`check_case` under a memory and time limit.

    A case that kills the worker (out of memory, a crash) or outlives the time limit is
    reported as a bug and the worker is restarted for the next one.
    """

    def __init__(self, timeout_s: float = CASE_TIMEOUT_S):
        self.timeout_s = timeout_s
        self.folder = Path(tempfile.mkdtemp(prefix="spineseg-fuzz-"))
        self.proc: subprocess.Popen | None = None
        self.count = 0

    def _start(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", SPINESEG_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), *sys.path])
        env["SPINESEG_FUZZ_OUT"] = str(self.folder / "out")  # removed with the folder
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import nifti_fuzz; nifti_fuzz._serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )
        ready = self._read_line(timeout=300)
        if ready != "ready":
            raise RuntimeError(f"fuzz worker did not start: {ready!r}")

    def _read_line(self, timeout: float) -> str | None:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return line.strip() if line else None

    def check(self, case: Case) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc is not None and self.proc.stdin is not None
        self.count += 1  # a fresh name: the worker may still map the previous file
        path = self.folder / f"fuzz{self.count}_{case.seed}{case.suffix}"
        path.write_bytes(case.payload)
        t0 = time.perf_counter()
        self.proc.stdin.write(json.dumps({"path": str(path)}) + "\n")
        self.proc.stdin.flush()
        line = self._read_line(self.timeout_s)
        elapsed = time.perf_counter() - t0
        path.unlink(missing_ok=True)
        if line is None:
            code = self.proc.poll()
            self.close()
            why = f"exit code {code}" if code is not None else f"over {self.timeout_s:g} s"
            return {"kind": "bug", "detail": f"worker died or hung ({why})", "seconds": elapsed}
        outcome = json.loads(line)
        outcome["seconds"] = elapsed
        return outcome

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


def _serve() -> None:
    """Worker loop: warm up (imports, demo model), cap the address space, answer cases."""
    import resource
    import warnings

    import nibabel as nib

    from napari_spineseg import api
    from napari_spineseg.demo import demo_model_folder

    out_dir = Path(os.environ["SPINESEG_FUZZ_OUT"])
    out_dir.mkdir(parents=True, exist_ok=True)
    warm = np.zeros((8, 12, 12), np.float32)
    warm[3:5, 5:7, 5:7] = 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        api.segment(
            nib.Nifti1Image(warm, np.eye(4)), model=demo_model_folder(), trust=True, device="cpu"
        )
    with open("/proc/self/status") as fh:
        size_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmSize"))
    limit = size_kb * 1024 + WORKER_EXTRA_BYTES
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        outcome = check_case(Path(request["path"]), out_dir)
        print(json.dumps(outcome), flush=True)
