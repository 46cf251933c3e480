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
    tables = [t for t in re.findall(r"<table[^>]*>", page) if 'class="rm-grid"' not in t]  # the routing maps are grids
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


def test_no_nan_cell_ranks_are_integers_and_counts_agree(report):
    _, page = report
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", page)
    assert cells and not any(c.strip().lower() in ("nan", "+nan", "-nan", "inf") for c in cells)
    for dash in re.findall(r'<td title="([^"]*)">–</td>', page):
        assert dash  # every "–" says why
    assert "no interval: the bootstrap intervals are computed for the differences only" in page
    mediation = page.split('<section id="mediation-through-routing">')[1].split("</section>")[0]
    ranks = re.findall(r'<td data-value="(\d+)\.0">(\d+)</td></tr>', mediation)
    assert ranks and all(a == b for a, b in ranks) and [int(b) for _, b in ranks] == list(range(1, len(ranks) + 1))
    assert "pairs)" not in page.replace("(layer, expert) pairs", "") and " 1 pairs" not in page


def test_caveat_when_few_texts(report):
    _, page = report
    n = 3  # --limit 3
    summary = page.split('<section id="summary">')[1].split("</section>")[0]
    assert f"<b>Caveat: </b>These conclusions rest on {n} texts in" in summary and "fewer than 30 per domain" in summary
    driver = page.split('<section id="driver-experts">')[1].split("</section>")[0]
    assert "first-order estimate" in driver and "Caveat" in driver  # which estimate, and on how little data


def test_one_routing_map_per_domain_equal_to_the_cache(report):
    from html import unescape

    import torch

    from moelens import HookedMoE
    from moelens.tasks.demo import demo_texts

    out, page = report
    section = page.split('<section id="routing-map">')[1].split("</section>")[0]
    maps = section.split('class="moelens-routing-map')[1:]
    texts = demo_texts(3)
    assert len(maps) == len(texts) and re.findall(r"<h3>([^<]*)</h3>", section) == list(texts)
    model = HookedMoE.from_pretrained("moelens/mixtral-tiny", dtype=torch.float32)
    for chunk, domain_texts in zip(maps, texts.values(), strict=True):
        _, cache = model.run_with_cache(domain_texts[0])
        topk = cache.topk_indices()[:, 0]  # [moe_layer pos k]
        cells = re.findall(r'data-pos="(\d+)" data-layer="(\d+)" data-layer-index="(\d+)" data-experts="([\d ]+)"', chunk)
        assert len(cells) == min(topk.shape[1], 64) * topk.shape[0]
        for pos, _, li, experts in cells:
            assert [int(e) for e in unescape(experts).split()] == topk[int(li), int(pos)].tolist()
    assert section.count("Legend") == len(texts)


def _general_stats(n_layers=6, n_experts=8, seed=0):
    import torch

    from moelens.analysis.routing_stats import RoutingStats
    from moelens.metrics import topk_mask_from_indices

    stats = RoutingStats(["a", "b", "c"], moe_layers=tuple(range(0, 2 * n_layers, 2)), n_experts=n_experts, top_k=2)
    generator = torch.Generator().manual_seed(seed)
    for domain in stats.domains:
        index = torch.randint(0, n_experts, (n_layers, 50, 2), generator=generator)
        scores = torch.softmax(torch.randn(n_layers, 50, n_experts, generator=generator), -1)
        stats.accumulate_layers(domain, topk_mask_from_indices(index, n_experts), scores)
    return stats


def test_scatter_labels_the_table_rows_without_overlap_and_an_integer_colorbar():
    from matplotlib.text import Annotation, Text

    from moelens.analysis.plots import plot_general_vs_domain

    stats = _general_stats()
    general = stats.general_experts(top=10)
    fig = plot_general_vs_domain(stats, general=general)
    fig.canvas.draw()
    labels = [child for child in fig.axes[0].get_children() if isinstance(child, Annotation)]
    assert [a.get_text() for a in sorted(labels, key=lambda a: a.get_text())] == sorted(
        f"L{r.layer}E{r.expert}" for r in general.head(5).itertuples())  # the table's first five rows, nothing else
    ax = fig.axes[0]
    height = max(Text.get_window_extent(a).height for a in labels)  # the text alone (an Annotation's extent has its line)
    heights = sorted(ax.transAxes.transform(a.xyann)[1] for a in labels)  # labels share one column: compare heights
    assert min(b - a for a, b in zip(heights, heights[1:])) > height  # no two labels overlap
    lines = [(a.xy, a.xyann) for a in labels]  # point (data) -> label (axes fraction): compare in display space
    segs = [(ax.transData.transform(p), ax.transAxes.transform(q)) for p, q in lines]

    def cross(s, t):
        (a, b), (c, d) = s, t

        def orient(p, q, r):
            return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])
        return orient(a, b, c) * orient(a, b, d) < 0 and orient(c, d, a) * orient(c, d, b) < 0

    assert not any(cross(s, t) for i, s in enumerate(segs) for t in segs[i + 1:])
    bar = fig.axes[-1]
    ticks = [t.get_text() for t in bar.get_xticklabels()]
    assert ticks == [str(x) for x in stats.moe_layers]  # one integer tick per MoE layer, no 0.5 steps


def test_sections_are_placed_by_declaration_not_by_numbers(tmp_path):
    from moelens.report import SECTIONS

    for title in reversed(SECTIONS):  # written in the opposite order
        write_section(tmp_path, title, el("p", title))
    write_section(tmp_path, "Something new", el("p", "x"))  # not declared: after the declared ones
    page = assemble(tmp_path).read_text(encoding="utf-8")
    positions = [page.index(f"<h2>{title}</h2>") for title in (*SECTIONS, "Something new")]
    assert positions == sorted(positions)
