"""``import napari_spineseg`` (and its Qt-free core) must not pull napari, Qt or torch.

Why: the CLI, notebooks and batch jobs use the core without a display, and napari asks
every plugin's manifest at startup; a heavy import there costs seconds for every user.
Checked in a fresh interpreter, because this test process may already hold napari.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "torch", "nnunetv2", "vispy")
CORE = (
    "napari_spineseg",
    "napari_spineseg.errors",
    "napari_spineseg.progress",
    "napari_spineseg.io",
    "napari_spineseg.layers",
    "napari_spineseg.phantom",
    "napari_spineseg._reader",
    "napari_spineseg._writer",
    "napari_spineseg._sample_data",
    "napari_spineseg.demo",
    # the Qt-free halves of the widgets (issue 8): jobs, review state, the save path
    "napari_spineseg.jobs",
    "napari_spineseg.correction.review",
    "napari_spineseg.saving",
)
OPTIONAL = ("napari_spineseg.api", "napari_spineseg.catalog")

SCRIPT = """
import importlib, importlib.util, json, sys
core, optional, heavy = {core!r}, {optional!r}, {heavy!r}
for name in core:
    importlib.import_module(name)
for name in optional:
    if importlib.util.find_spec(name) is not None:
        importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
print(json.dumps(loaded))
"""


def test_core_imports_stay_light():
    code = SCRIPT.format(core=CORE, optional=OPTIONAL, heavy=HEAVY)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"heavy modules imported by the core: {loaded}"
