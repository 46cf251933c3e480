"""docs/screenshots.py as an MkDocs hook: fresh screenshots replace the committed copies in the
site's files; without Chromium (or with MOELENS_SCREENSHOTS=0) the files stay as they are and the
build goes on with a note. The real screenshots are taken by every docs build."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]') runs the hook")


@pytest.fixture
def hook():
    spec = importlib.util.spec_from_file_location("moelens_docs_screenshots", ROOT / "docs" / "screenshots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _site_files(tmp_path):
    from mkdocs.config.defaults import MkDocsConfig
    from mkdocs.structure.files import File, Files

    (tmp_path / "docs" / "images").mkdir(parents=True)
    (tmp_path / "docs" / "images" / "report.png").write_bytes(b"old")
    config = MkDocsConfig()
    config.load_dict({"site_name": "t", "docs_dir": str(tmp_path / "docs"), "site_dir": str(tmp_path / "site")})
    config.validate()
    config.plugins._current_plugin = "screenshots"  # set by MkDocs while it runs a hook's event
    return config, Files([File("images/report.png", config.docs_dir, config.site_dir, False)])


def test_fresh_screenshots_replace_the_committed_copies(hook, tmp_path, monkeypatch):
    config, files = _site_files(tmp_path)
    monkeypatch.setattr(hook, "render", lambda: {"report": b"new report", "routing_map": b"new map"})
    files = hook.on_files(files, config)
    assert files.get_file_from_path("images/report.png").content_bytes == b"new report"
    assert files.get_file_from_path("images/routing_map.png").content_bytes == b"new map"
    assert len(files) == 2


def test_no_chromium_keeps_the_copies_with_a_note(hook, tmp_path, monkeypatch, caplog):
    config, files = _site_files(tmp_path)

    def missing():
        raise FileNotFoundError("no Chromium/Chrome found")

    monkeypatch.setattr(hook, "render", missing)
    with caplog.at_level(logging.INFO, logger="mkdocs.hooks.screenshots"):
        files = hook.on_files(files, config)
    assert files.get_file_from_path("images/report.png").content_bytes == b"old"
    assert any("not regenerated" in r.message and r.levelno == logging.INFO for r in caplog.records)  # a note, not a warning: strict builds go on
    monkeypatch.setenv("MOELENS_SCREENSHOTS", "0")
    monkeypatch.setattr(hook, "render", lambda: pytest.fail("MOELENS_SCREENSHOTS=0 must not render"))
    assert hook.on_files(files, config).get_file_from_path("images/report.png").content_bytes == b"old"


def test_every_screenshot_named_in_viz_md_exists():
    page = (ROOT / "docs" / "viz.md").read_text(encoding="utf-8")
    from importlib import util

    spec = util.spec_from_file_location("s", ROOT / "docs" / "screenshots.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in module.NAMES:
        assert f"(images/{name}.png)" in page and (ROOT / "docs" / "images" / f"{name}.png").exists(), name
