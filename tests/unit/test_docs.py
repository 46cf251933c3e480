"""The docs cover the public surface: API entries, docstring examples, one page per error class and
per architecture spec, generated tables that match the code, and a strict mkdocs build."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import moelens
from moelens import errors
from moelens.architectures import SPECS
from moelens.names import HOOK_TABLE
from moelens.zoo import ZOO_MODELS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"moelens_docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load("gen_pages")


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    return gen.generated_pages()


def _api_directives() -> set[str]:
    """Every ``::: dotted.path`` of the API pages."""
    found = set()
    for page in (DOCS / "api").glob("*.md"):
        found |= set(re.findall(r"^::: ([\w.]+)\s*$", page.read_text(encoding="utf-8"), flags=re.M))
    return found


# -- (a) public names: an API entry and a docstring example ------------------------------------------


@pytest.mark.parametrize("name", moelens.__all__)
def test_public_name_has_an_api_entry(name):
    obj = getattr(moelens, name)
    directives = _api_directives()
    module = getattr(obj, "__module__", "")
    covered = any(d == f"moelens.{name}" or d.endswith(f".{name}") or d == module for d in directives)
    assert covered, (
        f"moelens.{name} has no entry in docs/api/*.md: add a line `::: moelens.{name}` to the page "
        f"of its topic (directives found: {sorted(directives)})."
    )


_EXAMPLE = re.compile(r"^\s*(>>>|Examples?\b.*:\s*$)", flags=re.M)


@pytest.mark.parametrize("name", moelens.__all__)
def test_public_name_docstring_has_an_example(name):
    doc = getattr(moelens, name).__doc__ or ""  # its own docstring, not one inherited from a base
    assert _EXAMPLE.search(doc), (
        f"the docstring of moelens.{name} has no example: add a doctest (`>>> ...`) or an "
        f"`Example::` block. Docstring: {doc.strip()[:200]!r}"
    )


# -- (b) one page per error class ----------------------------------------------------------------


@pytest.mark.parametrize("name", errors.__all__)
def test_error_class_has_a_hand_written_page(name, pages):
    path = DOCS / "errors" / f"{name}.md"
    assert path.exists(), f"docs/errors/{name}.md is missing: write it with sections Symptom, Cause, Fix."
    text = path.read_text(encoding="utf-8")
    assert f"<!-- moelens:error {name} -->" in text, f"docs/errors/{name}.md lacks its generated header marker"
    for section in ("Symptom", "Cause", "Fix"):
        match = re.search(rf"^## {section}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
        assert match and len(match.group(1).strip()) > 20, f"docs/errors/{name}.md: section {section} is empty"
    header = gen.fill_markers(text, f"errors/{name}.md")
    summary = inspect.getdoc(getattr(errors, name)).split("\n\n")[0]
    assert "<!-- moelens:" not in header and summary in header
    assert {name: f"errors/{name}.md"} in gen.nav_additions()["errors/index.md"]


def test_error_index_lists_every_class():
    table = gen.fill_markers((DOCS / "errors" / "index.md").read_text(encoding="utf-8"), "errors/index.md")
    for name in errors.__all__:
        assert f"errors/{name}.md)" in table, name


def test_missing_error_page_gets_a_stub():
    stub = gen.error_stub(errors.HookShapeError)
    assert "<!-- moelens:error HookShapeError -->" in stub and "Not written yet" in stub


# -- (c) one generated page per architecture spec --------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_architecture_spec_has_a_generated_page(spec, pages):
    page = pages.get(gen.arch_page(spec))
    assert page is not None, f"no generated page for {spec.name}"
    expected = [*spec.model_types, *spec.checkpoints, spec.routing.summary, spec.router_io.name, spec.router]
    expected += [spec.routing.route.__name__, spec.n_experts_attr, spec.top_k_attr, spec.notes]
    for text in expected:
        assert text in page, f"{gen.arch_page(spec)} does not mention {text!r}"
    for suffix in gen.offered_hooks(spec):
        assert suffix in page
    assert {", ".join(spec.model_types): gen.arch_page(spec)} in gen.nav_additions()["architectures/index.md"]
    assert f"]({gen.arch_page(spec)})" in gen.routing_table("")


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_offered_hooks_on_the_page_match_a_real_model(family):
    from moelens import HookedMoE
    from moelens.testing import tiny_model

    model = HookedMoE.from_hf(tiny_model(family))
    from moelens.names import parse_hook_name

    suffixes = {parse_hook_name(name)[1] for name in model.hook_names}
    assert suffixes == set(gen.offered_hooks(model.spec))


def test_hook_table_has_every_row():
    table = gen.hook_table()
    for suffix, row in HOOK_TABLE.items():
        line = next(line for line in table.splitlines() if f"`{gen._hook_name(suffix)}`" in line)
        assert row.shape in line and ("read-only" in line) == (not row.writable)


def test_every_marker_of_the_hand_written_pages_is_filled():
    for page in DOCS.rglob("*.md"):
        relative = page.relative_to(DOCS).as_posix()
        filled = gen.fill_markers(page.read_text(encoding="utf-8"), relative)
        assert "<!-- moelens:" not in filled, relative
    with pytest.raises(ValueError, match="unknown marker"):
        gen.fill_markers("<!-- moelens:no-such-table -->", "index.md")


def test_every_page_is_in_the_nav():
    """Hand-written pages are listed in mkdocs.yml, generated ones are added by the hook."""
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    added = {path for entries in gen.nav_additions().values() for entry in entries for path in entry.values()}
    for page in DOCS.rglob("*.md"):
        relative = page.relative_to(DOCS).as_posix()
        assert relative in nav or relative in added, f"docs/{relative} is not in the nav of mkdocs.yml"


# -- the griffe extension that makes reST docstrings render as Markdown ------------------------------


def test_docstrings_render_as_markdown():
    ext = _load("griffe_doctest")
    text = "Intro :class:`~moelens.HookedMoE`.\n\n>>> 1 + 1\n2\n\nExample::\n\n    x = 1\n\nEnd."
    out = ext.markdownify(text)
    assert "`HookedMoE`" in out and ":class:" not in out
    assert "```pycon\n>>> 1 + 1\n2\n```" in out
    assert "Example:\n\n```python\nx = 1\n```" in out
    assert ext.markdownify("```python\n>>> kept\n```") == "```python\n>>> kept\n```"


# -- the getting-started example runs ------------------------------------------------------------


def test_getting_started_example_runs():
    from moelens.zoo import resolve

    if resolve("moelens/mixtral-tiny") is None:
        pytest.skip("the zoo model moelens/mixtral-tiny is not packaged in this checkout")
    text = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    code = re.search(r"## HookedMoE in ten lines\n+```python\n(.*?)```", text, flags=re.S).group(1)
    lines = [line for line in code.splitlines() if line.strip() and not line.startswith(("from ", "import "))]
    assert len(lines) <= 10, f"the ten-line example has {len(lines)} lines"
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(compile(code, "getting-started.md", "exec"), {})
    assert "HookedMoE(mixtral" in out.getvalue()


def test_zoo_card_page(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("---\nlicense: mit\n---\n# tiny\n\nSee [the log](train_log.json), [HF](https://hf.co).\n")
    page = gen.zoo_markdown("tiny", readme)
    assert page.startswith("# tiny") and "license" not in page
    assert "the log (`train_log.json`)" in page and "[HF](https://hf.co)" in page


# -- (d) the strict build ------------------------------------------------------------------------


def test_tutorial_environment_names_the_data_and_silences_progress(tmp_path):
    env = gen.tutorial_environment({"PYTHONPATH": "/elsewhere"})
    assert env["MOELENS_DOCS_BUILD"] == "1" and env["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert env["MOELENS_TUTORIAL_SMALL"] == "1" and env["OMP_NUM_THREADS"] == "1"  # unless asked otherwise
    assert gen.tutorial_environment({"MOELENS_TUTORIAL_SMALL": "0"})["MOELENS_TUTORIAL_SMALL"] == "0"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/elsewhere"]  # the kernels import this checkout
    shared = ROOT.parent / "shared" / "data"
    assert env.get("MOELENS_DATA_DIR") == (str(shared) if shared.is_dir() else None)
    assert "MOELENS_DATA_DIR" not in gen.tutorial_environment({"MOELENS_DATA_DIR": str(tmp_path)})  # the user's choice wins


def _built(site: Path, page: str) -> Path:
    """The HTML file of a page: ``page.html`` (the offline plugin's layout) or ``page/index.html``."""
    flat = site / f"{page}.html"
    return flat if flat.exists() else site / page / "index.html"


TUTORIALS = sorted(path.stem for path in (ROOT / "tutorials").glob("[0-9][0-9]_*.py"))


def _plots(tutorial: str) -> bool:
    """Whether a tutorial displays figures (a ``display(...plot...)`` call)."""
    source = (ROOT / "tutorials" / f"{tutorial}.py").read_text(encoding="utf-8")
    return bool(re.search(r"^\s*display\([^)]*plot", source, flags=re.M))


@pytest.mark.slow
def test_strict_build(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings_handlers.python")
    from moelens.zoo import resolve

    if any(resolve(f"moelens/{name}") is None for name in ZOO_MODELS):
        pytest.skip("the tutorials need both zoo models, packaged with the checkout")
    # The build executes the tutorials (mkdocs-jupyter); small limits, figures to a temporary folder.
    # The data folder, progress bars and import path are set by the build itself (gen_pages), as for
    # anyone who runs `mkdocs build`.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1", "MOELENS_TUTORIAL_OUT": str(tmp_path / "figures")}
    env.pop("MOELENS_DATA_DIR", None)
    env.pop("MOELENS_TUTORIAL_SMALL", None)
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    real_data = (ROOT.parent / "shared" / "data").is_dir()
    assert len(TUTORIALS) == 5, TUTORIALS
    for tutorial in TUTORIALS:
        page = _built(site, f"tutorials/{tutorial}").read_text(encoding="utf-8")
        assert "Traceback" not in page and "<Figure size" not in page and "&lt;Figure size" not in page, tutorial
        # One displayed PNG per plot call (an <img>, not the CSS background images of the theme): every
        # plot call of a tutorial writes its figure to its own file under MOELENS_TUTORIAL_OUT/<tutorial>/.
        images = re.findall(r"<img[^>]+src=\"data:image/png;base64,", page)
        written = sorted((tmp_path / "figures" / tutorial).glob("*.png"))
        assert len(images) == len(written), (tutorial, len(images), [p.name for p in written])
        assert bool(images) == _plots(tutorial), (tutorial, len(images))
        stderr = re.findall(r'<div[^>]+data-mime-type="application/vnd.jupyter.stderr"[^>]*>(.{0,300})', page, flags=re.S)
        assert not stderr, f"{tutorial} shows stderr output (progress bars, log lines, warnings): {stderr}"
        if tutorial != "01_hooks_cache_interventions":
            said = "data: evaluation sets" if real_data else "data: the packaged demo texts"
            assert said in page, f"{tutorial} does not say which data it used ({said!r})"
    first = _built(site, "tutorials/01_hooks_cache_interventions").read_text(encoding="utf-8")
    assert first.count('data-moelens="circuitsvis-bundle"') == 1 and "CircuitsVis.render(" in first  # the routing view
    assert "<b>ActivationCache</b>" in first  # the cache's notebook display
    for spec in SPECS:
        assert _built(site, f"architectures/{spec.name}").exists()
    for name in errors.__all__:
        assert _built(site, f"errors/{name}").exists()
    hooks_page = _built(site, "concepts/hook-points").read_text(encoding="utf-8")
    assert "blocks.{L}.moe.hook_router_logits" in hooks_page and "<!-- moelens:" not in hooks_page
    metrics = _built(site, "concepts/metrics").read_text(encoding="utf-8")
    assert "CWAS<sub>" in metrics and "\\(" not in metrics and "mathjax" not in metrics.lower()
    for page in site.rglob("*.html"):  # offline: no script, style or font from another host
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"<(script|link)[^>]+(src|href)=\"https?://", text), page
    _check_pages_in_a_browser(site)


def _check_pages_in_a_browser(site: Path) -> None:
    """The executed tutorial page and the formula page, opened from file:// in headless Chromium:
    the routing widget renders, nothing is logged as an error, nothing is fetched from the network."""
    from tests.browser.chromium import find_browser, load

    if find_browser() is None or importlib.util.find_spec("websocket") is None:
        return  # tests/browser reports the skip with its reason; the build checks above still ran
    rendered = "Array.from(document.querySelectorAll('.moelens-view')).every(v => v.children.length > 0)"
    tutorial = load(_built(site, "tutorials/01_hooks_cache_interventions"), wait_for=rendered,
                    expressions={"rendered": rendered, "views": "document.querySelectorAll('.moelens-view').length"})
    assert tutorial.values == {"rendered": True, "views": 1}, tutorial.values
    metrics = load(_built(site, "concepts/metrics"))
    for report in (tutorial, metrics):
        # The theme's search index loads only over HTTP (a served site); from file:// it is the one
        # error expected, and it is the theme's, not the page content's.
        errors_ = [e for e in report.console_errors if "search/search_index" not in e]
        assert errors_ == [] and report.network_requests == [], (report.console_errors, report.network_requests)
