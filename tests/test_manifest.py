"""The npe2 manifest is valid and napari finds our reader, writer and sample data.

Why: a typo in ``napari.yaml`` (a moved function, a bad pattern) does not fail at import
time; napari silently drops the plugin or shows an error only when a user opens a file.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys

import pytest

npe2 = pytest.importorskip("npe2")


def test_npe2_validate_passes():
    exe = shutil.which("npe2") or None
    cmd = [exe] if exe else [sys.executable, "-m", "npe2"]
    out = subprocess.run(
        [*cmd, "validate", "napari-spineseg"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in (out.stdout + out.stderr).lower()


@pytest.fixture(scope="module")
def manifest():
    return npe2.PluginManifest.from_distribution("napari-spineseg")


def test_every_command_resolves_to_a_python_object(manifest):
    # Qt widgets may not import without a display; check the rest imports and exists.
    for cmd in manifest.contributions.commands:
        module, _, attr = cmd.python_name.partition(":")
        if module.startswith("napari_spineseg._qt"):
            continue
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        assert callable(obj), cmd.python_name


def test_reader_is_offered_for_nifti(manifest):
    pm = npe2.PluginManager()
    pm.register(manifest)
    for name in ("sub-01_T2w.nii.gz", "t2.nii", "T2.NII.GZ"):
        readers = [r.command for r in pm.iter_compatible_readers([name])]
        assert "napari-spineseg.get_reader" in readers, name
    assert not list(pm.iter_compatible_readers(["image.tif"]))


def test_writer_and_sample_data_are_declared(manifest):
    writers = manifest.contributions.writers
    assert [w.layer_types for w in writers] == [["labels"]]
    assert set(writers[0].filename_extensions) == {".nii", ".nii.gz"}
    keys = [s.key for s in manifest.contributions.sample_data]
    assert "cord_phantom" in keys
