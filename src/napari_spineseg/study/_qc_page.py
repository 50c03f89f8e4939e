"""The QC report page: one self-contained HTML file (inline CSS and JS, no network).

Keys follow SCT's QC report: ↑/↓ previous/next row, → toggle overlay, F cycles the mark
(✅ pass → ❌ fail → ⚠️ artifact → none), / jumps to the search box (Esc leaves it).
Marks are kept in ``localStorage`` under ``spineseg-qc:<report id>``.
"""

from __future__ import annotations

import json
from typing import Any

_CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:0;background:#f4f4f4;color:#222}
header{position:sticky;top:0;background:#1f2933;color:#fff;padding:8px 12px;z-index:2}
header h1{font-size:17px;margin:0 0 6px 0}
header .bar{display:flex;gap:10px;align-items:center;flex-wrap:wrap;font-size:13px}
header input,header select,header button{font-size:13px;padding:3px 6px}
.keys kbd{background:#eee;color:#222;border-radius:3px;padding:0 4px;margin:0 2px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #ddd;padding:4px 6px;font-size:13px;vertical-align:top}
th{background:#e4e7eb;position:sticky;top:70px;text-align:left}
tr.selected{outline:3px solid #2563eb;outline-offset:-3px;background:#eef4ff}
td.mark{font-size:22px;text-align:center;width:36px}
td.what{min-width:190px;max-width:260px;word-break:break-all}
.flag{display:inline-block;background:#fde68a;border-radius:8px;padding:0 6px;margin:1px;
  font-size:12px}
.err{color:#b91c1c}
img.mosaic{max-width:980px;image-rendering:pixelated;display:block}
img.sag{max-height:320px;image-rendering:pixelated;display:block}
.muted{color:#666}
"""

_JS = r"""
"use strict";
const DATA = JSON.parse(document.getElementById("qc-data").textContent);
const STORE = "spineseg-qc:" + DATA.report_id;
const CYCLE = ["", "✅", "❌", "⚠️"];
let marks = {};
try { marks = JSON.parse(localStorage.getItem(STORE) || "{}") || {}; } catch (e) { marks = {}; }
let overlay = true;
let selected = -1;
const tbody = document.getElementById("rows");

function fmt(obj, unit) {
  const parts = Object.entries(obj || {}).map(([k, v]) => k + " " + v + unit);
  return parts.length ? parts.join("<br>") : "<span class='muted'>-</span>";
}
function esc(s) {
  return String(s).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;",
    '"': "&quot;", "'": "&#39;"}[c]));
}
function confidence(c) {
  if (!c) return "";
  const tip = c.corrected ? "the model output's (the mask was corrected since)" :
    "the model's lowest per-slice confidence";
  return "<br><span class='muted conf' title=\"" + tip + "\">lowest conf. " +
    Number(c.lowest).toFixed(2) + (c.corrected ? "*" : "") + " (" + esc(c.class) +
    ", slice " + c.slice + ")</span>";
}
function build() {
  DATA.rows.forEach((r, i) => {
    const tr = document.createElement("tr");
    tr.dataset.id = r.id;
    tr.dataset.index = i;
    const flags = Object.entries(r.flags || {}).map(([f, s]) =>
      "<span class='flag' title='slices " + s.join(", ") + "'>" + esc(f) + " ×" + s.length +
      "</span>").join(" ");
    const pics = r.error ? "<span class='err'>" + esc(r.error) + "</span>" :
      "<img class='mosaic' alt='axial mosaic of " + esc(r.id) + "' data-plain='img/" +
      esc(r.png.axial) + "' data-overlay='img/" + esc(r.png.axial_overlay) + "' src='img/" +
      esc(r.png.axial_overlay) + "'>";
    const sag = r.error ? "" : "<img class='sag' alt='sagittal of " + esc(r.id) +
      "' data-plain='img/" + esc(r.png.sag) + "' data-overlay='img/" +
      esc(r.png.sag_overlay) + "' src='img/" + esc(r.png.sag_overlay) + "'>";
    tr.innerHTML = "<td>" + (i + 1) + "</td><td>sub-" + esc(r.subject) +
      (r.session ? "<br>ses-" + esc(r.session) : "") + "</td><td class='what'>" +
      esc(r.image_rel) +
      "<br><b>" + esc(r.suffix) + "</b> <span class='muted'>" + esc(r.yaml_key) +
      "</span></td><td class='mark'></td><td class='flags'>" +
      (flags || "<span class='muted'>none</span>") +
      (r.empty ? " <span class='flag'>empty mask</span>" : "") + confidence(r.confidence) +
      "</td><td>" + fmt(r.volume_mm3, " mm³") + "</td><td>" + fmt(r.csa_mm2, " mm²") +
      "</td><td>" + pics + "</td><td>" + sag + "</td>";
    tr.addEventListener("click", () => select(i));
    tbody.appendChild(tr);
  });
  refreshMarks();
}
function rowsEl() { return Array.from(tbody.children); }
function visible() { return rowsEl().filter(tr => tr.style.display !== "none"); }
function refreshMarks() {
  rowsEl().forEach(tr => {
    tr.querySelector("td.mark").textContent = marks[tr.dataset.id] || "";
  });
  const c = {"✅": 0, "❌": 0, "⚠️": 0};
  Object.values(marks).forEach(m => { if (m in c) c[m] += 1; });
  document.getElementById("counts").textContent =
    DATA.rows.length + " rows · ✅ " + c["✅"] + " · ❌ " + c["❌"] + " · ⚠️ " + c["⚠️"];
  document.getElementById("save-fail").disabled = c["❌"] === 0;
  document.getElementById("save-artifact").disabled = c["⚠️"] === 0;
}
function select(i) {
  rowsEl().forEach(tr => tr.classList.remove("selected"));
  selected = i;
  const tr = tbody.children[i];
  if (tr) { tr.classList.add("selected"); tr.scrollIntoView({block: "nearest"}); }
}
function move(step) {
  const vis = visible();
  if (!vis.length) return;
  const pos = vis.findIndex(tr => Number(tr.dataset.index) === selected);
  const next = pos < 0 ? 0 : Math.min(vis.length - 1, Math.max(0, pos + step));
  select(Number(vis[next].dataset.index));
}
function cycleMark() {
  if (selected < 0) return;
  const id = DATA.rows[selected].id;
  const now = marks[id] || "";
  const next = CYCLE[(CYCLE.indexOf(now) + 1) % CYCLE.length];
  if (next) marks[id] = next; else delete marks[id];
  localStorage.setItem(STORE, JSON.stringify(marks));
  refreshMarks();
}
function toggleOverlay() {
  overlay = !overlay;
  document.querySelectorAll("img[data-overlay]").forEach(img => {
    img.src = overlay ? img.dataset.overlay : img.dataset.plain;
  });
  document.getElementById("overlay-state").textContent = overlay ? "on" : "off";
}
function applyFilter() {
  const q = document.getElementById("search").value.trim().toLowerCase();
  const f = document.getElementById("flag-filter").value;
  rowsEl().forEach(tr => {
    const r = DATA.rows[Number(tr.dataset.index)];
    const text = (r.image_rel + " " + r.suffix + " " + r.mask_rel).toLowerCase();
    const nflags = Object.keys(r.flags || {}).length;
    let ok = !q || text.includes(q);
    if (f === "flagged") ok = ok && nflags > 0;
    else if (f === "clean") ok = ok && nflags === 0;
    else if (f.startsWith("mark:")) ok = ok && (marks[r.id] || "") === f.slice(5);
    else if (f) ok = ok && f in (r.flags || {});
    tr.style.display = ok ? "" : "none";
  });
}
function exportYaml(mark) {
  const byKey = {};
  DATA.rows.forEach(r => {
    if ((marks[r.id] || "") !== mark) return;
    (byKey[r.yaml_key] = byKey[r.yaml_key] || []);
    if (!byKey[r.yaml_key].includes(r.image)) byKey[r.yaml_key].push(r.image);
  });
  const keys = Object.keys(byKey);
  if (!keys.length) return "# No rows matched\n";
  return keys.map(k => k + ":\n" + byKey[k].map(p => "- " + JSON.stringify(p)).join("\n"))
    .join("\n") + "\n";
}
function download(mark) {
  const name = mark === "❌" ? "qc_fail.yml" : "qc_artifact.yml";
  const blob = new Blob([exportYaml(mark)], {type: "text/plain;charset=utf-8"});
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}
document.addEventListener("keydown", ev => {
  const typing = ev.target && ["INPUT", "SELECT"].includes(ev.target.tagName);
  if (typing) { if (ev.key === "Escape") ev.target.blur(); return; }
  if (ev.key === "ArrowDown") { move(1); ev.preventDefault(); }
  else if (ev.key === "ArrowUp") { move(-1); ev.preventDefault(); }
  else if (ev.key === "ArrowRight") { toggleOverlay(); ev.preventDefault(); }
  else if (ev.key === "f" || ev.key === "F") { cycleMark(); ev.preventDefault(); }
  else if (ev.key === "/") { document.getElementById("search").focus(); ev.preventDefault(); }
});
document.getElementById("search").addEventListener("input", applyFilter);
document.getElementById("flag-filter").addEventListener("change", applyFilter);
document.getElementById("save-fail").addEventListener("click", () => download("❌"));
document.getElementById("save-artifact").addEventListener("click", () => download("⚠️"));
window.spinesegQc = {exportYaml, marks: () => Object.assign({}, marks), select};
build();
"""


def page(*, title: str, deriv: str, report_id: str, rows: list[dict[str, Any]], flags) -> str:
    """The whole report as one HTML string (row data embedded as JSON)."""
    data = json.dumps({"report_id": report_id, "deriv": deriv, "rows": rows}, ensure_ascii=False)
    data = data.replace("</", "<\\/")  # never close the script element early
    options = "".join(f'<option value="{f}">flag: {f}</option>' for f in flags)
    marks = "".join(
        f'<option value="mark:{m}">marked {m}</option>' for m in ("✅", "❌", "⚠️", "")
    ).replace("marked <", "unmarked <")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="icon" href="data:,"><style>{_CSS}</style></head>
<body><header><h1>{title}</h1><div class="bar">
<span id="counts"></span>
<input id="search" placeholder="search ( / )" size="28">
<select id="flag-filter"><option value="">all rows</option>
<option value="flagged">any flag</option><option value="clean">no flag</option>
{options}{marks}</select>
<button id="save-fail">Save Fails</button><button id="save-artifact">Save Artifacts</button>
<span class="keys"><kbd>↑</kbd><kbd>↓</kbd> previous/next <kbd>→</kbd> overlay
(<span id="overlay-state">on</span>) <kbd>F</kbd> ✅ pass | ❌ fail | ⚠️ artifact
<kbd>/</kbd> search</span></div></header>
<table><thead><tr><th>#</th><th>subject</th><th>image / output</th><th>QC</th><th>flags</th>
<th>volume</th><th>mean CSA</th><th>axial (mask extent, superior first)</th>
<th>sagittal</th></tr></thead><tbody id="rows"></tbody></table>
<script id="qc-data" type="application/json">{data}</script>
<script>{_JS}</script></body></html>
"""
