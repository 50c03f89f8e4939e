"""The Review panel's lazy slice-table model against SliceTable.rows() (the plain rows)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("qtpy")
from qtpy.QtCore import Qt  # noqa: E402

from napari_spineseg._qt.slice_table_model import (  # noqa: E402
    FLAGGED_COLOR,
    SLICE_ROLE,
    SliceTableModel,
)
from napari_spineseg.correction import slice_table  # noqa: E402

LABELS = {"empty": "gap", "extra_components": "extra components", "area_jump": "area jump"}


def faulty_cord() -> tuple[np.ndarray, dict[int, str]]:
    lab = np.zeros((20, 16, 16), np.uint8)
    yy, xx = np.mgrid[:16, :16]
    disk = (yy - 8) ** 2 + (xx - 8) ** 2 <= 9
    lab[3:17][:, disk] = 1
    lab[9] = 0  # a gap
    lab[5, 0, 0] = 1  # an extra component
    lab[7, 7:9, 7:9] = 3  # lesion inside the cord
    lab[12, 14:16, 14:16] = 3  # lesion outside the cord
    return lab, {1: "sc", 3: "lesion"}


def expected_cells(row: dict, names: list[str]) -> list[str]:
    conf = row["confidence"]
    return [
        str(row["slice"]),
        ", ".join(LABELS.get(f, f) for f in row["flags"]) or "–",
        "–" if np.isnan(conf) else f"{conf:.2f}",
        *[f"{row['area'][n]:.1f}" for n in names],
        str(sum(row["components"].values())),
        "yes" if row["reviewed"] else "",
    ]


@pytest.mark.parametrize("order", ["severity", "confidence", "slice"])
@pytest.mark.parametrize("only_flagged", [True, False])
def test_every_cell_equals_the_plain_rows(qapp, order, only_flagged):
    lab, classes = faulty_cord()
    rng = np.random.default_rng(3)
    probs = {1: rng.random(lab.shape).astype(np.float32)}
    table = slice_table(lab, (2.0, 0.5, 0.5), classes, probabilities=probs)
    table.set_reviewed([5])
    model = SliceTableModel(LABELS)
    model.set_table(table, order, only_flagged)
    want_order = table.order(order, only_flagged=only_flagged)
    rows = table.rows(want_order)
    names = [table.classes[v] for v in table.classes]
    assert model.rowCount() == len(rows) > 0
    assert model.slices() == [r["slice"] for r in rows]
    headers = [model.headerData(c, Qt.Orientation.Horizontal) for c in range(model.columnCount())]
    assert headers == ["Slice", "Flags", "Conf.", "sc mm²", "lesion mm²", "Comp.", "Reviewed"]
    for r, row in enumerate(rows):
        cells = [model.data(model.index(r, c)) for c in range(model.columnCount())]
        assert cells == expected_cells(row, names)
        assert model.data(model.index(r, 0), SLICE_ROLE) == row["slice"] == model.slice_at(r)
        colour = model.data(model.index(r, 3), Qt.ItemDataRole.ForegroundRole)
        assert (colour == FLAGGED_COLOR) == bool(row["flags"] and not row["reviewed"])
        if colour is None:
            assert not row["flags"] or row["reviewed"]


def test_only_flagged_filters_and_a_reset_shows_new_marks(qapp):
    lab, classes = faulty_cord()
    table = slice_table(lab, (2.0, 0.5, 0.5), classes)
    model = SliceTableModel(LABELS)
    model.set_table(table, "slice", only_flagged=True)
    flagged = np.flatnonzero(table.flagged()).tolist()
    assert model.slices() == flagged and 9 in flagged and 5 in flagged
    row9 = model.slices().index(9)
    assert model.data(model.index(row9, 1)).startswith("gap")
    assert model.data(model.index(row9, model.columnCount() - 1)) == ""
    table.set_reviewed([9])
    model.refresh_rows()
    assert model.data(model.index(row9, model.columnCount() - 1)) == "yes"
    assert model.data(model.index(row9, 0), Qt.ItemDataRole.ForegroundRole) is None
    model.set_table(None)
    assert model.rowCount() == 0 and model.columnCount() == 0
    assert model.data(model.index(0, 0)) is None
