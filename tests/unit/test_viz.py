"""moelens.viz: the values each view shows equal the cache's, tokens read as text and are escaped,
saved pages are offline (inline bundle once, no CDN), and the notebook displays summarise."""

from __future__ import annotations

import re

import pytest
import torch

from moelens import HookedMoE
from moelens.errors import InvalidInputError
from moelens.viz import (
    View,
    expert_tokens,
    readable_tokens,
    routing_tokens,
    save_html,
    token_values,
)
from moelens.viz.html import (
    Markup,
    circuitsvis_text,
    el,
    escape,
    heatmap_svg,
    script_json,
    table,
)
from moelens.viz.render import BUNDLE_PATH

HOSTILE = 'Good <script>alert(1)</script> film "><img src=x onerror=alert(2)> & co.\nSecond line'


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HookedMoE.from_pretrained("moelens/mixtral-tiny", dtype=torch.float32)


def _cache(model, text):
    with torch.inference_mode():
        _, cache = model.run_with_cache(text)
    return cache


def test_readable_tokens_join_to_the_decoded_text(model):
    ids = model.to_tokens(HOSTILE)[0].tolist()
    tokens = readable_tokens(model.tokenizer, ids)
    assert len(tokens) == len(ids)
    assert "".join(tokens) == model.tokenizer.decode(ids)
    assert not any("Ġ" in t or "Ċ" in t for t in tokens)  # byte-level markers are gone
    assert "\n" in tokens and any(t.startswith(" ") for t in tokens)


def test_readable_tokens_split_multibyte_character(model):
    ids = model.to_tokens("café ☃")[0].tolist()
    tokens = readable_tokens(model.tokenizer, ids)
    assert "".join(tokens).endswith("café ☃") and len(tokens) == len(ids)


def test_routing_view_values_equal_the_cache_gate_weights(model):
    view = routing_tokens(model, HOSTILE)
    gate = _cache(model, HOSTILE).gate_weights()[:, 0]  # [moe_layer pos n_experts]
    shown = torch.tensor(view.props["activations"])  # [pos layer expert]
    assert shown.shape == (gate.shape[1], len(model.cfg.moe_layers), model.cfg.n_experts)
    assert torch.equal(shown.permute(1, 0, 2), gate.float())
    assert ((shown > 0).sum(-1) == model.cfg.top_k).all()  # exactly the routed experts are coloured
    assert view.props["firstDimensionLabels"] == [str(x) for x in model.cfg.moe_layers]


def test_routing_view_one_layer(model):
    layer = model.cfg.moe_layers[1]
    view = routing_tokens(model, "The movie was great", layer=layer)
    gate = _cache(model, "The movie was great").gate_weights()[1, 0]
    assert torch.equal(torch.tensor(view.props["activations"])[:, 0], gate.float())
    with pytest.raises(InvalidInputError, match="not an MoE layer"):
        routing_tokens(model, "x", layer=99)
    with pytest.raises(InvalidInputError, match="must be a str"):
        routing_tokens(model, ["x"])


def test_tokens_are_escaped_for_circuitsvis(model):
    view = routing_tokens(model, HOSTILE)
    readable = readable_tokens(model.tokenizer, model.to_tokens(HOSTILE)[0].tolist())
    visible = ["⏎\n" if t == "\n" else "␣" * len(t) if t.strip(" ") == "" else t for t in readable]
    assert "\n" in readable and view.props["tokens"] == circuitsvis_text(visible)  # whitespace tokens read
    joined = "".join(view.props["tokens"])
    assert "<" not in joined and "&lt;" in joined and "&amp;" in joined


def test_every_view_has_a_legend(model):
    tokens = readable_tokens(model.tokenizer, model.to_tokens("a b\n c")[0].tolist())
    views = [routing_tokens(model, "a b\n c"), expert_tokens(model, ["a b", "c d e"], model.cfg.moe_layers[0], 1),
             token_values(tokens, torch.linspace(-1, 1, len(tokens))), token_values(tokens, torch.rand(len(tokens), 2), labels=["x", "y"])]
    for view in views:
        assert view.legend is not None and "Legend" in view.legend and view.legend in view.fragment()
    assert "-1 " in views[2].legend and "red" in views[2].legend  # signed values: a diverging key
    assert f"{float(torch.tensor(views[0].props['activations']).max()):.3g}" in views[0].legend  # the scale's top is the data's max


def test_expert_view_sorts_texts_and_shows_the_expert_weights(model):
    texts = ["2 + 2 = 4", "The film was wonderful and moving.", "Which planet is largest?"]
    layer, expert = model.cfg.moe_layers[2], 3
    view = expert_tokens(model, texts, layer, expert)
    shown = view.props["activations"][0][0]
    maxima = [max(values) for values in shown]
    assert maxima == sorted(maxima, reverse=True)
    expected = {}
    for text in texts:
        gate = _cache(model, text).gate_weights()[2, 0, :, expert]
        expected[round(float(gate.max()), 7)] = gate.float().tolist()
    for values in shown:
        assert values == expected[round(max(values), 7)]
    scores = expert_tokens(model, texts, layer, expert, value="score").props["activations"][0][0]
    assert all(0 < v < 1 for values in scores for v in values)
    with pytest.raises(InvalidInputError, match="expert=8"):
        expert_tokens(model, texts, layer, 8)
    with pytest.raises(InvalidInputError, match="value='logits'"):
        expert_tokens(model, texts, layer, 0, value="logits")


def test_token_values_views():
    view = token_values(["a", "<b>"], [0.5, -2.0], title="attribution")
    assert view.props["tokens"] == ["a", "&lt;b&gt;"] and view.props["values"] == [0.5, -2.0]
    assert (view.props["minValue"], view.props["maxValue"]) == (-2.0, 2.0)
    unsigned = token_values(["a", "b"], [0.5, 2.0])
    assert (unsigned.props["minValue"], unsigned.props["maxValue"]) == (0.0, 2.0)
    multi = token_values(["a", "b"], torch.tensor([[1.0, 2.0], [3.0, 4.0]]), labels=["L0", "L1"])
    assert multi.element == "ColoredTokensMulti" and multi.props["values"] == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(InvalidInputError, match="shape"):
        token_values(["a"], [1.0, 2.0])
    with pytest.raises(InvalidInputError, match="NaN"):
        token_values(["a"], [float("nan")])
    with pytest.raises(InvalidInputError, match="labels"):
        token_values(["a"], [[1.0, 2.0]], labels=["x"])


def test_saved_file_is_offline_and_escaped(model, tmp_path):
    path = routing_tokens(model, HOSTILE).save(tmp_path / "routing.html")
    page = path.read_text(encoding="utf-8")
    assert page.count('data-moelens="circuitsvis-bundle"') == 1
    assert "var CircuitsVis" in page and "unpkg" not in page and "cdn.jsdelivr" not in page
    assert not re.search(r"<script[^>]*\bsrc=", page)  # nothing loaded from anywhere
    body = page.split("</script>", 1)[1]  # everything after the bundle
    assert "<script>alert" not in body and "<img src=x" not in body
    assert body.count("\\u0026lt;") >= 3  # the tokens are there: HTML-escaped, then JSON-escaped
    size = path.stat().st_size
    assert BUNDLE_PATH.stat().st_size < size < BUNDLE_PATH.stat().st_size + 100_000


def test_one_bundle_per_page(model, tmp_path):
    views = [routing_tokens(model, "a b"), token_values(["x"], [1.0]), expert_tokens(model, ["c d"], 0, 1)]
    page = save_html(tmp_path / "views.html", views, title="<b>three</b>").read_text(encoding="utf-8")
    assert page.count('data-moelens="circuitsvis-bundle"') == 1
    assert page.count("CircuitsVis.render(") == 3 + page.split("</script>", 1)[0].count("CircuitsVis.render(")
    assert "<title>&lt;b&gt;three&lt;/b&gt;</title>" in page


def test_view_is_a_circuitsvis_object_that_never_probes_the_network(monkeypatch):
    from circuitsvis.utils import render

    monkeypatch.setattr(render, "internet_on", lambda: pytest.fail("probed the network"))
    view = token_values(["a"], [1.0])
    assert isinstance(view, render.RenderedHTML)
    assert view._repr_html_() == str(view) == view.local_src and "var CircuitsVis" in view.local_src
    assert "unpkg.com/circuitsvis" in view.cdn_src and "\\u003c" not in View("ColoredTokens", {"tokens": ["a"]}).cdn_src


def test_script_json_cannot_close_the_script():
    text = script_json({"t": "</script><script>alert(1)</script>", "u": "\u2028&"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    import json

    assert json.loads(text) == {"t": "</script><script>alert(1)</script>", "u": "\u2028&"}


def test_el_escapes_text_and_attributes_but_not_markup():
    assert str(el("a", "<x>", href='"><script>')) == '<a href="&quot;&gt;&lt;script&gt;">&lt;x&gt;</a>'
    assert str(el("p", Markup("<b>ok</b>"))) == "<p><b>ok</b></p>"
    assert escape(3) == "3" and str(el("img", src="data:x")) == '<img src="data:x">'


def test_table_is_sortable_and_keeps_numbers_exact():
    import pandas as pd

    html = table(pd.DataFrame({"name": ["<i>x</i>"], "value": [0.123456789]}), caption="cap <b>")
    assert 'class="sortable"' in html and "<caption>cap &lt;b&gt;</caption>" in html
    assert 'data-value="0.123456789"' in html and ">0.1235<" in html and "&lt;i&gt;x&lt;/i&gt;" in html


def test_heatmap_has_one_cell_per_value():
    svg = heatmap_svg([[0.0, 0.5, float("nan")], [1.0, 0.25, 0.0]], ["L0", "L1"], "rate")
    assert svg.count("</title></rect>") == 6 and svg.count("<rect") == 16 and "legend: 0" in svg and "#dddddd" in svg and "L1 expert 1: 0.25" in svg


def test_heatmap_caption_fits_in_the_svg():
    """An SVG clips what lies past its width: the caption ("share of tokens routed to each expert (min 0,
    m...") was cut at 240 px. The width now leaves at least 0.6 em (6 px at font-size 10) per character."""
    title = "share of tokens routed to each expert"
    svg = heatmap_svg([[0.0, 0.5, 0.125]], ["L0"], title)
    caption = re.search(r"<text[^>]*>([^<]*share of tokens[^<]*)</text>", svg).group(1)
    width = float(re.search(r'<svg[^>]* width="(\d+)"', svg).group(1))
    assert caption == f"{title} (min 0, max 0.5)" and width >= 6 * len(caption)


def test_notebook_displays(model):
    from moelens import collect_routing_stats, driver_effects
    from moelens.tasks.demo import demo_texts

    data = demo_texts(2)
    stats = collect_routing_stats(model, data, progress=False)
    page = stats._repr_html_()
    best = stats.domain_experts(top=1)
    for row in best.itertuples(index=False):
        assert f"top {row.domain} expert" in page and f"L{row.layer}E{row.expert}" in page
    assert page.count("</title></rect>") == len(model.cfg.moe_layers) * model.cfg.n_experts
    assert len(repr(stats)) < 300 and "<" not in repr(stats)
    effects = driver_effects(model, data["math"], method="first_order", progress=False)
    page = effects._repr_html_()
    top = effects.top(1)
    assert f"L{int(top.layer[0])}E{int(top.expert[0])}" in page and page.count("</title></rect>") == effects.effect.numel()
    cache = _cache(model, ["a b c", "d"])
    page = cache._repr_html_()
    assert "blocks.0.moe.hook_topk_indices" in page and page.count("</title></rect>") == len(model.cfg.moe_layers) * model.cfg.n_experts
    n_tokens = int(cache.attention_mask.sum())
    assert f'<th>tokens</th><td style="text-align:left">{n_tokens}</td>' in page
    keep = cache.attention_mask.bool()
    share = cache.topk_mask()[0][keep][:, 0].float().mean()  # expert 0 of the first MoE layer, real tokens only
    assert f"L{model.cfg.moe_layers[0]} expert 0: {float(share):.4g}<" in page
