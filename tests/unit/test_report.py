"""The analyze report: a summary of what was found first, captions computed from the tables,
sortable tables, the circuitsvis token views inline (one bundle), and nothing loaded from the web."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from typer.testing import CliRunner

from moelens.cli import app
from moelens.report import assemble, write_section
from moelens.viz import el


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    result = CliRunner().invoke(app, ["analyze", "--limit", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, (out / "report.html").read_text(encoding="utf-8")


def _percent(x: float) -> str:
    return f"{100 * x:.0f}%"


def test_captions_state_the_numbers_of_the_tables(report):
    out, page = report
    rates = pd.read_csv(out / "routing_stats.csv")
    best = pd.read_csv(out / "domain_experts.csv").groupby("domain", sort=False).head(1)
    for row in best.itertuples(index=False):
        cell = rates[(rates.layer == row.layer) & (rates.expert == row.expert)]
        overall = cell["count"].sum() / cell["n_tokens"].sum()  # pooled over every domain's tokens
        sentence = (f"xpert {row.expert} of layer {row.layer} fires on {_percent(row.activation_rate)} of "
                    f"{row.domain} tokens vs {_percent(overall)} overall.")
        assert page.count(sentence) == 2, sentence  # in the summary and in the domain-experts section


def test_summary_comes_first_and_names_the_top_driver(report):
    out, page = report
    sections = re.findall(r'<section id="([^"]+)">', page)
    assert sections[0] == "summary" and "tokens-by-expert" in sections
    summary = page.split('<section id="summary">')[1].split("</section>")[0]
    top = pd.read_csv(out / "driver_effects.csv").sort_values("effect", ascending=False).iloc[0]
    assert "What we found:" in summary
    assert f"erturbing expert {int(top.expert)} of layer {int(top.layer)} changes the next-token distribution most" in summary
    assert f"mean KL {top.effect:.3g} nats" in summary


def test_tables_sort_and_nothing_comes_from_the_web(report):
    _, page = report
    tables = re.findall(r"<table[^>]*>", page)
    assert tables and all('class="sortable"' in t for t in tables)
    assert page.count("table.sortable") == 1  # the sorting script, once
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    ours = re.sub(r'<script data-moelens="circuitsvis-bundle">.*?</script>', "", page, flags=re.DOTALL)  # the page less the bundle
    assert "unpkg" not in page and "mathjax" not in ours.lower() and "\\(" not in ours
    assert "CWAS = A × (1 − H)" in page  # the formula as plain text


def test_token_views_share_one_bundle(report):
    out, page = report
    n_domains = len(pd.read_csv(out / "domain_experts.csv")["domain"].unique())
    assert page.count('data-moelens="circuitsvis-bundle"') == 1
    assert page.count("CircuitsVis.render(\"moelens-view-") == n_domains
    print(f"report.html: {len(page.encode()) / 1e6:.2f} MB")


def test_section_title_and_page_title_are_escaped(tmp_path):
    write_section(tmp_path, 10, "<i>x</i>", el("p", "<b>"))
    page = assemble(tmp_path, title="<script>t</script>").read_text(encoding="utf-8")
    assert "<h2>&lt;i&gt;x&lt;/i&gt;</h2>" in page and "<p>&lt;b&gt;</p>" in page
    assert "<title>&lt;script&gt;t&lt;/script&gt;</title>" in page and "<script>t" not in page


def test_sections_are_placed_by_declaration_not_by_numbers(tmp_path):
    from moelens.report import SECTIONS

    for title in reversed(SECTIONS):  # written in the opposite order
        write_section(tmp_path, title, el("p", title))
    write_section(tmp_path, "Something new", el("p", "x"))  # not declared: after the declared ones
    page = assemble(tmp_path).read_text(encoding="utf-8")
    positions = [page.index(f"<h2>{title}</h2>") for title in (*SECTIONS, "Something new")]
    assert positions == sorted(positions)
