"""The layout when both widgets are docked from the Plugins menu (no ``review()``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from .conftest import PLUGIN

SCT = Path(__file__).resolve().parents[3] / "shared" / "data" / "sct_testing_data"
T2 = SCT / "t2" / "t2.nii.gz"
CORD = SCT / "t2" / "t2_seg-manual.nii.gz"


@pytest.mark.skipif(not CORD.exists(), reason=f"SCT example data not at {SCT}")
def test_menu_docked_widgets_share_one_tab_stack_and_the_table_is_usable(viewer, qtbot):
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    from napari_spineseg._qt.review_widget import TABLE_ROWS

    viewer.window._qt_window.resize(1400, 900)
    viewer.window._qt_window.show()
    viewer.open(T2, plugin=PLUGIN)
    (mask,) = viewer.open(CORD, plugin=PLUGIN)
    mask.data[20, 10:14, 10:14] = 1  # a blob beside the cord: slice 20 is flagged
    # Plugins > napari-spineseg > ... : what the menu calls (no tabify argument)
    seg_dock, _seg = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment spinal cord")
    rev_dock, review = viewer.window.add_plugin_dock_widget(PLUGIN, "Review and correct")
    for _ in range(5):
        QApplication.processEvents()
    main = viewer.window._qt_window
    assert rev_dock in main.tabifiedDockWidgets(seg_dock)
    # napari hands plugin widgets a proxy: the close guard and open routing reach the viewer
    assert getattr(vars(viewer).get("close"), "_spineseg_guarded", False)
    assert getattr(vars(viewer).get("open"), "_spineseg_routed", False)
    review.select_layer(mask)
    rev_dock.raise_()
    for _ in range(5):
        QApplication.processEvents()
    table = review.table_view
    row_px = table.verticalHeader().defaultSectionSize()
    assert table.height() >= TABLE_ROWS * row_px, (table.height(), row_px)
    assert not table.horizontalScrollBar().isVisible()
    # the splitter handle trades table height for tools height
    top, bottom = review.splitter.sizes()
    review.splitter.setSizes([top - 60, bottom + 60])
    assert review.splitter.sizes()[0] < top, (top, bottom, review.splitter.sizes())
    review.splitter.setSizes([top, bottom])
    assert table.height() >= TABLE_ROWS * row_px

    # arrow keys in the table move the viewer
    review.only_flagged.setChecked(False)
    review.sort_combo.setCurrentIndex(review.sort_combo.findData("slice"))
    table.setFocus()
    table.setCurrentIndex(review.table_model.index(4, 0))
    assert review.current_slice() == 4
    qtbot.keyClick(table, Qt.Key.Key_Down)
    assert review.current_slice() == 5
    # a click on the sparkline shows that slice
    spark = review.sparkline
    n = spark.values.size
    x = int((30.5 / n) * spark.width())
    qtbot.mouseClick(
        spark,
        Qt.MouseButton.LeftButton,
        pos=spark.rect().topLeft() + type(spark.rect().topLeft())(x, spark.height() // 2),
    )
    assert review.current_slice() == 30
    assert "axial" in viewer.canvas.overlays["spineseg_orientation"].text

    out = os.environ.get("SPINESEG_SCREENSHOT_DIR")
    if out:
        main.grab().save(str(Path(out) / "menu_layout.png"))
    assert np.ndim(mask.data) == 3
