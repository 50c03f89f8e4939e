"""Packaging checks that need no build: help text, package data, hub metadata.

The wheel itself is built and tested in a fresh virtual environment by
``tests/test_packaging_wheel.py`` (``tox -e wheel``); these checks catch the same mistakes
earlier, in the ordinary test run.
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from napari_spineseg import cli

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "napari_spineseg"
#: a path into the source repository, which a wheel install does not have
REPO_PATH = re.compile(r"(?<![\w/.:])(?:docs|tests|scripts|benchmarks|src)/[\w./-]+")


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _all_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``--help`` text of the command and of every subcommand."""
    out = {"spineseg": parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[f"spineseg {name}"] = sub.format_help()
    return out


def test_help_points_to_nothing_a_wheel_install_lacks():
    texts = _all_help(cli._parser())
    assert "spineseg doctor" in texts
    found = {cmd: REPO_PATH.findall(text) for cmd, text in texts.items()}
    assert {cmd: paths for cmd, paths in found.items() if paths} == {}


def test_tasks_output_points_to_nothing_a_wheel_install_lacks(monkeypatch, tmp_path):
    monkeypatch.setenv("SPINESEG_MODELS_DIR", str(tmp_path))
    out = io.StringIO()
    assert cli._cmd_tasks(None, out) == 0
    assert REPO_PATH.findall(out.getvalue()) == []


def test_every_package_data_file_is_declared(pyproject):
    """A data file added under src/ without a package-data pattern would not ship."""
    patterns = pyproject["tool"]["setuptools"]["package-data"]["napari_spineseg"]
    data = [
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*")
        if p.is_file() and p.suffix not in {".py", ".pyc"} and "__pycache__" not in p.parts
    ]
    assert "napari.yaml" in data
    assert any(p.endswith("checkpoint_final.pth") for p in data)
    undeclared = [
        f
        for f in data
        if not any(
            fnmatch.fnmatch(f, pat) or fnmatch.fnmatch(f, pat.replace("**/", ""))
            for pat in patterns
        )
    ]
    assert undeclared == []


def test_metadata_names_licences_that_exist_and_the_napari_framework(pyproject):
    project = pyproject["project"]
    assert project["dynamic"] == ["version"]
    assert "version" not in project
    assert pyproject["tool"]["setuptools_scm"]["fallback_version"]
    assert "Framework :: napari" in project["classifiers"]
    for licence in project["license-files"]:
        assert (ROOT / licence).is_file(), licence
    assert project["entry-points"]["napari.manifest"] == {
        "napari-spineseg": "napari_spineseg:napari.yaml"
    }


def test_napari_hub_metadata(pyproject):
    config = yaml.safe_load((ROOT / ".napari-hub" / "config.yml").read_text())
    assert config["visibility"] == "public"
    assert config["project_urls"] == pyproject["project"]["urls"]
    description = (ROOT / ".napari-hub" / "DESCRIPTION.md").read_text()
    assert "spineseg doctor" in description
    assert "--index-url https://download.pytorch.org/whl/cpu" in description


def test_docs_nav_lists_every_page():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(entry):
        if isinstance(entry, str):
            yield entry
        elif isinstance(entry, dict):
            for v in entry.values():
                yield from pages(v)
        elif isinstance(entry, list):
            for v in entry:
                yield from pages(v)

    in_nav = set(pages(config["nav"]))
    docs = {p.name for p in (ROOT / "docs").iterdir() if p.suffix in {".md", ".ipynb"}}
    assert docs - in_nav == set(), "pages missing from mkdocs.yml's nav"


def test_docs_hook_leaves_out_pages_that_do_not_exist_yet(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "_hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    (tmp_path / "usage.md").write_text("# Usage\n")
    nav = [
        {"Home": "usage.md"},
        {"Guide": [{"Usage": "usage.md"}, {"Cohort": "cohort.md"}]},
        {"Later": [{"Cohort": "cohort.md"}]},
    ]
    assert hooks._keep(nav, tmp_path) == [{"Home": "usage.md"}, {"Guide": [{"Usage": "usage.md"}]}]
