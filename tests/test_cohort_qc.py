"""`spineseg qc DERIV -o QCDIR`: report content (rows, flags from correction/qc.py, mosaics,
cache, manual-correction YAML keys) and a real headless browser (Debian's chromium driven
by selenium): no console error, the right images per row, SCT's keyboard marks, local
storage, the exported qc_fail.yml read back.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from napari_spineseg import catalog, cli
from napari_spineseg.correction import qc
from napari_spineseg.errors import SpinesegError
from napari_spineseg.io import load, save_labels
from napari_spineseg.study import qc_report
from test_cohort_bids import MODEL, segment_demo_bids

distributed = pytest.importorskip("distributed", reason="the batch extra is not installed")

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


@pytest.fixture(scope="module")
def deriv(tmp_path_factory):
    """4 images segmented with the demo model; one cord mask gets a gap (an empty slice)."""
    root = tmp_path_factory.mktemp("bids")
    summary = segment_demo_bids(root)
    gapped = summary.deriv / "sub-01/ses-02/anat/sub-01_ses-02_T2w_cord_seg.nii.gz"
    vol = load(gapped)
    data = np.asarray(vol.data).copy()
    disp = vol.geometry.to_display(data)
    disp[10] = 0  # display slice 10: a hole in the cord
    save_labels(vol.geometry.to_file(disp), gapped, like=vol, replace_like=True)
    return summary.deriv


@pytest.fixture(scope="module")
def report(deriv, tmp_path_factory):
    out = tmp_path_factory.mktemp("qc")
    index = qc_report.write_report(deriv, out, jobs=2)
    return index


def _rows(index: Path) -> list[dict]:
    text = index.read_text(encoding="utf-8")
    start = text.index('<script id="qc-data" type="application/json">') + len(
        '<script id="qc-data" type="application/json">'
    )
    return json.loads(text[start : text.index("</script>", start)])["rows"]


# ----------------------------------------------------------------------------- content


def test_one_row_per_image_and_output_with_the_review_queue_flags(deriv, report):
    rows = _rows(report)
    assert [(r["image_rel"].split("/")[-1], r["suffix"]) for r in rows] == [
        (f"sub-{s}_ses-{e}_T2w.nii.gz", suf)
        for s in ("00", "01")
        for e in ("01", "02")
        for suf in ("_cord_seg", "_csf_seg")
    ]
    for r in rows:
        mask = load(deriv / r["mask_rel"])
        lab = np.asarray(mask.display_data())
        table = qc.slice_table(lab, mask.geometry.scale, {1: r["classes"]["1"]})
        expected = {f: np.flatnonzero(table.flags[f]).tolist() for f in qc.FLAGS}
        assert r["flags"] == {f: s for f, s in expected.items() if s}
        covered = np.flatnonzero(lab.any(axis=(1, 2)))
        assert r["slices"] == list(range(covered[0], covered[-1] + 1))
        voxel_mm3 = float(np.prod(mask.geometry.scale))
        name = r["classes"]["1"]
        assert r["volume_mm3"][name] == pytest.approx((lab > 0).sum() * voxel_mm3, abs=0.1)
        assert r["yaml_key"] == "FILES_SEG"
    gapped = next(r for r in rows if r["id"] == "sub-01_ses-02_T2w_cord_seg")
    assert gapped["flags"]["empty"] == [10]
    assert 10 in gapped["slices"]  # the gap is shown (a tile without overlay)
    cord = next(r for r in rows if r["id"] == "sub-00_ses-01_T2w_cord_seg")
    assert 10 < cord["csa_mm2"]["cord"] < 200  # mm², the phantom cord's size


def test_mosaics_are_the_rows_own_and_are_cached(deriv, report):
    img_dir = report.parent / "img"
    rows = _rows(report)
    pngs = {r["id"]: (img_dir / r["png"]["axial_overlay"]).read_bytes() for r in rows}
    assert len(set(pngs.values())) == len(rows)  # every row its own picture
    from PIL import Image

    first = rows[0]
    with Image.open(img_dir / first["png"]["axial_overlay"]) as im:
        cols = min(qc_report.MOSAIC_COLUMNS, len(first["slices"]))
        assert im.size[1] == qc_report.TILE_PX * -(-len(first["slices"]) // cols)
    with (
        Image.open(img_dir / first["png"]["axial"]) as plain,
        Image.open(img_dir / first["png"]["axial_overlay"]) as over,
    ):
        a, b = np.asarray(plain), np.asarray(over)
        assert a.shape == b.shape and (a != b).any()
        assert (a[..., 0] == a[..., 1]).all()  # no overlay: grey
    # a second report re-renders nothing; a changed mask re-renders its row only
    mtimes = {p: p.stat().st_mtime_ns for p in img_dir.iterdir()}
    time.sleep(0.01)
    qc_report.write_report(deriv, report.parent, jobs=2)
    assert {p: p.stat().st_mtime_ns for p in img_dir.iterdir()} == mtimes
    mask = deriv / rows[0]["mask_rel"]
    os.utime(mask)
    qc_report.write_report(deriv, report.parent, jobs=1)
    changed = {p.name for p in img_dir.iterdir() if p.stat().st_mtime_ns != mtimes[p]}
    assert changed == set(rows[0]["png"].values())


def test_manual_correction_keys_follow_the_catalog_outputs():
    key = qc_report.manual_correction_key
    assert [key(o) for o in catalog.LESION_SCI.outputs] == ["FILES_SEG", "FILES_LESION"]
    assert [key(o) for o in catalog.GM_SC_7T.outputs] == ["FILES_SEG", "FILES_GMSEG"]
    assert [key(o) for o in catalog.GM_WM_MOUSE.outputs] == ["FILES_GMSEG", "FILES_GMSEG"]
    assert [key(o) for o in catalog.ROOTLETS.outputs] == ["FILES_ROOTLETS"]
    assert [key(o) for o in catalog.SPINE.outputs] == ["FILES_LABEL", "FILES_SEG"]
    assert set(qc_report.YAML_KEYS) >= {key(o) for t in catalog.tasks() for o in t.outputs}


def test_qc_command_and_its_errors(deriv, tmp_path, capsys):
    assert cli.main(["qc", str(deriv), "-o", str(tmp_path / "q"), "--jobs", "1"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "q" / "index.html")
    # batch --qc: nothing left to segment (no cluster started), the report is written
    root = deriv.parent.parent
    argv = ["batch", "-i", str(root), "--model", MODEL, "--trust", "--qc", str(tmp_path / "b")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "0 segmented, 0 failed, 4 skipped" in out
    assert f"QC report: {tmp_path / 'b' / 'index.html'}" in out
    assert cli.main(["qc", str(tmp_path), "-o", str(tmp_path / "q2")]) == 1
    assert "no batch recorded here" in capsys.readouterr().err
    bad = tmp_path / "bad.yml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(SpinesegError, match="bad.yml: not a manual-correction YAML"):
        qc_report.read_marks_yaml(bad)


# ----------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (testing group)"
    )
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not chromium or not driver_bin:
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install)")
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_bin), options=opts)
    driver.execute_cdp_cmd(
        "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    driver.downloads = downloads
    yield driver
    driver.quit()


def _press(driver, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def _mark_cells(driver) -> list[str]:
    return [td.text for td in driver.find_elements("css selector", "#rows td.mark")]


def test_report_in_a_headless_browser(report, browser):
    from selenium.webdriver.common.keys import Keys

    browser.get(report.as_uri())
    rows = _rows(report)
    browser.execute_script("localStorage.clear()")
    browser.refresh()
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    trs = browser.find_elements("css selector", "#rows tr")
    assert [tr.get_attribute("data-id") for tr in trs] == [r["id"] for r in rows]
    for tr, r in zip(trs, rows, strict=True):
        mosaic = tr.find_element("css selector", "img.mosaic")
        assert mosaic.get_attribute("src").endswith(f"/img/{r['id']}_axial_overlay.png")
        width = browser.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", mosaic
        )
        from PIL import Image

        with Image.open(report.parent / "img" / r["png"]["axial_overlay"]) as im:
            assert width == im.size[0]  # loaded, and it is that file
        sag = tr.find_element("css selector", "img.sag")
        assert sag.get_attribute("src").endswith(f"/img/{r['id']}_sag_overlay.png")

    # SCT's keys: ↓ selects the next row, F cycles ✅ -> ❌ -> ⚠️ -> none
    _press(browser, Keys.ARROW_DOWN)
    _press(browser, "f")
    assert _mark_cells(browser)[0] == "✅"
    _press(browser, "f")
    assert _mark_cells(browser)[0] == "❌"
    _press(browser, Keys.ARROW_DOWN)
    _press(browser, Keys.ARROW_DOWN)
    _press(browser, "f" * 3)
    _press(browser, Keys.ARROW_DOWN)
    _press(browser, "f" * 2)
    marks = _mark_cells(browser)
    assert marks[:4] == ["❌", "", "⚠️", "❌"] and set(marks[4:]) == {""}
    _press(browser, Keys.ARROW_RIGHT)  # overlay off
    src = trs[0].find_element("css selector", "img.mosaic").get_attribute("src")
    assert src.endswith(f"/img/{rows[0]['id']}_axial.png")

    browser.refresh()  # marks survive a reload
    assert _mark_cells(browser)[:4] == ["❌", "", "⚠️", "❌"]
    text = browser.execute_script("return window.spinesegQc.exportYaml('❌')")
    import yaml

    expected = {"FILES_SEG": [rows[0]["image"], rows[3]["image"]]}
    assert yaml.safe_load(text) == expected

    browser.find_element("id", "save-fail").click()
    target = browser.downloads / "qc_fail.yml"
    deadline = time.monotonic() + 10
    while not target.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert qc_report.read_marks_yaml(target) == expected
    # the cohort queue reads it back: the failed images only, marked "fail"
    from napari_spineseg.study.state import CohortSession

    queue = CohortSession.open_path(target, rater="R")
    assert [str(c.image) for c in queue.cases] == sorted({rows[0]["image"], rows[3]["image"]})
    assert {c.qc for c in queue.cases} == {"fail"}
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def test_filter_on_flags_in_the_browser(report, browser):
    from selenium.webdriver.support.ui import Select

    browser.get(report.as_uri())
    Select(browser.find_element("id", "flag-filter")).select_by_value("empty")
    shown = [
        tr.get_attribute("data-id")
        for tr in browser.find_elements("css selector", "#rows tr")
        if tr.is_displayed()
    ]
    assert shown == ["sub-01_ses-02_T2w_cord_seg"]


def test_the_report_needs_no_network(report):
    text = report.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
