"""MkDocs hook: leave nav entries whose page is not in docs/ out of the site.

Why: the nav lists every user-guide page in reading order, including pages that other
branches add (cohort.md); until such a page exists the strict build would fail on the
dangling nav entry. Here the entry is dropped with an INFO line, so the nav is written
once and each page appears as soon as its file lands.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.nav")


def _keep(entry, docs_dir: Path):
    if isinstance(entry, str):
        return entry if entry.startswith("http") or (docs_dir / entry).is_file() else None
    if isinstance(entry, dict):
        out = {}
        for title, value in entry.items():
            kept = _keep(value, docs_dir)
            if kept:
                out[title] = kept
            else:
                log.info("nav: %s (%s) has no page yet; left out", title, value)
        return out or None
    if isinstance(entry, list):
        kept = [k for k in (_keep(e, docs_dir) for e in entry) if k]
        return kept or None
    return entry


def on_config(config):
    """Drop nav entries whose Markdown/notebook file is missing."""
    if config.nav:
        config.nav = _keep(config.nav, Path(config.docs_dir)) or []
    return config
