"""moelens.viz.routing_map: every cell's experts equal run_with_cache's top-k indices (several
families, a 64-expert/16-layer model, texts, token ids and a cache), the HTML cells say the same,
tokens and payloads are escaped, whitespace reads, and bad arguments get one clear error."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
import torch

from moelens import HookedMoE
from moelens.errors import InvalidInputError
from moelens.testing import tiny_model
from moelens.viz import RoutingMap, routing_map, save_html
from tests.models import token_batch, wrapped

HOSTILE = 'Good <script>alert(1)</script> film "><img src=x onerror=alert(2)> & co.\n\tSecond  line'


@pytest.fixture(scope="module")
def zoo():
    return HookedMoE.from_pretrained("moelens/mixtral-tiny", dtype=torch.float32)


class _Cells(HTMLParser):
    """(data-layer, data-pos, data-experts, ids shown) of every cell; the tags seen."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.cells, self.tags, self.tokens, self._cell, self._token = [], set(), [], None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if tag == "td" and "rm-cell" in (attrs.get("class") or ""):
            self._cell = [attrs["data-seq"], attrs["data-layer"], attrs["data-pos"], attrs["data-experts"], []]
            self.cells.append(self._cell)
        elif tag == "span" and self._cell is not None and "rm-id" in (attrs.get("class") or ""):
            self._cell[4].append(attrs["data-expert"])
        elif tag == "td" and "rm-token" in (attrs.get("class") or ""):
            self._token = ""

    def handle_endtag(self, tag):
        if tag == "td":
            if self._token is not None:
                self.tokens.append(self._token)
            self._cell, self._token = None, None

    def handle_data(self, data):
        if self._token is not None:
            self._token += data


def _check_cells(view: RoutingMap, topk: list[torch.Tensor]) -> None:
    """The view's tensors and its HTML cells both equal ``topk[seq]`` ([moe_layer pos k], in order)."""
    parsed = _Cells()
    parsed.feed(str(view))
    assert len(parsed.cells) == sum(t.shape[0] * t.shape[1] for t in topk)
    for seq, layer, pos, experts, shown in parsed.cells:
        li = view.layers.index(int(layer))
        expected = topk[int(seq)][li, int(pos)].tolist()
        assert [int(e) for e in experts.split()] == expected
        assert [int(e) for e in shown] == expected  # top=None: every id shown, in the cache's order
    for seq, t in enumerate(topk):
        assert torch.equal(view.indices[seq], t.cpu())


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "deepseek_v3", "gpt_oss", "llama4_text"])
def test_cells_equal_run_with_cache_topk_for_token_ids(family):
    model = wrapped(family)
    ids = token_batch(seed=1, batch=2, pos=7)
    view = routing_map(model, ids)
    _, cache = model.run_with_cache(ids)
    topk = cache.topk_indices()  # [moe_layer batch pos k]
    _check_cells(view, [topk[:, b] for b in range(ids.shape[0])])
    assert view.layers == list(model.cfg.moe_layers) and view.tokens[0] == [str(int(i)) for i in ids[0]]


def test_64_experts_16_layers_and_a_cache():
    model = HookedMoE.from_hf(tiny_model("qwen3_moe", num_experts=64, num_experts_per_tok=4, num_hidden_layers=16))
    ids = token_batch(seed=2, batch=1, pos=12)
    _, cache = model.run_with_cache(ids)
    topk = cache.topk_indices()[:, 0]
    for view in (routing_map(model, ids), routing_map(model, cache, tokens=[[f"t{i}" for i in range(12)]])):
        assert len(view.layers) == 16 and view.n_experts == 64
        _check_cells(view, [topk])
        assert view.scores[0].shape == (16, 12, 64)
    assert routing_map(model, cache, tokens=[[f"t{i}" for i in range(12)]]).tokens[0][3] == "t3"
    page = str(routing_map(model, ids))
    assert page.count('class="rm-swatch"') == 64 and 'aria-label="legend"' in page


def test_texts_each_run_like_run_with_cache_of_the_text(zoo):
    texts = [HOSTILE, "2 + 2 = 4"]
    view = routing_map(zoo, texts)
    topk = []
    for text in texts:
        _, cache = zoo.run_with_cache(text)
        topk.append(cache.topk_indices()[:, 0])
    _check_cells(view, topk)
    frame = view.to_frame()
    assert len(frame) == sum(t.shape[0] * t.shape[1] for t in topk)
    first = frame[(frame.sequence == 0) & (frame.layer == 1) & (frame.pos == 2)].iloc[0]
    assert list(first.experts) == topk[0][1, 2].tolist()


def test_top_shows_the_heaviest_ids_and_keeps_all_in_the_data(zoo):
    view = routing_map(zoo, "The cat sat", top=1, layers=[1, 3])
    parsed = _Cells()
    parsed.feed(str(view))
    for _seq, layer, pos, experts, shown in parsed.cells:
        li = view.layers.index(int(layer))
        weights = view.weights[0][li, int(pos)]
        assert len(experts.split()) == 2 and len(shown) == 1
        assert int(shown[0]) == int(view.indices[0][li, int(pos), weights.argmax()])
    assert {int(cell[1]) for cell in parsed.cells} == {1, 3} and "+1" in str(view)


def test_tokens_are_escaped_and_whitespace_visible(zoo, tmp_path):
    view = routing_map(zoo, HOSTILE)
    page = save_html(tmp_path / "map.html", [view]).read_text(encoding="utf-8")
    parsed = _Cells()
    parsed.feed(page)
    assert "img" not in parsed.tags and "<script>alert" not in page and "onerror=alert" not in page.replace("onerror=alert(2)&gt;", "")
    shown = "".join(parsed.tokens)
    assert "<script>alert(1)</script>" in shown and "⏎" in shown and "⇥" in shown and "␣" in shown
    assert parsed.tokens[0] == "<s>" and 'class="rm-token rm-special"' in page  # the BOS token, marked
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.DOTALL)
    assert all("<" not in s for s in scripts if s.startswith("window.moelensRoutingMapInit("))
    assert "unpkg" not in page and "circuitsvis-bundle" not in page  # no circuitsvis bundle needed


def test_notebook_html_is_self_contained(zoo):
    view = routing_map(zoo, "a b")
    html = view._repr_html_()
    assert html.count("<style>") == 1 and "moelensRoutingMapInit(\"" + view.uid in html and "Legend" in html
    assert repr(view).startswith("RoutingMap(1 sequence")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"inputs": "a", "layers": 9}, "layer=9"),
        ({"inputs": "a", "top": 3}, "top=3"),
        ({"inputs": "a", "top": 0}, "top=0"),
        ({"inputs": {"x": 1}}, "inputs of type dict"),
        ({"inputs": torch.zeros(2, 2, 2, dtype=torch.long)}, "shape (2, 2, 2)"),
        ({"inputs": "a", "max_tokens": 0}, "max_tokens=0"),
    ],
)
def test_bad_arguments(zoo, kwargs, message):
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        routing_map(zoo, **kwargs)


def test_texts_need_a_tokenizer():
    with pytest.raises(InvalidInputError, match="no tokenizer"):
        routing_map(wrapped("mixtral"), "some text")
