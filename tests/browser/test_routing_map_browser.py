"""The routing map of a 64-expert, 16-layer tiny model in headless Chromium, offline: it renders,
the legend is there, selecting an expert highlights exactly the cells that routed to it (counted in
Python from the cache), hovering shows every expert's score, and no JavaScript error or network
request happens. Skips where no Chromium/Chrome is installed (CI installs it: .ci/run)."""

from __future__ import annotations

import pytest
import torch

from tests.browser.chromium import find_browser, load

pytestmark = [
    pytest.mark.skipif(find_browser() is None, reason="no Chromium/Chrome found: `apt-get install chromium` (CI does) or set MOELENS_CHROMIUM"),
    pytest.mark.slow,
]
pytest.importorskip("websocket", reason="websocket-client (a test dependency) drives Chromium: pip install -e '.[test]'")

HOSTILE = 'Good <script>PWNED_MAP()</script> "><img src=x onerror=PWNED_IMG()>\n  x'


@pytest.fixture(scope="module")
def wide_model():
    from moelens import HookedMoE
    from moelens.testing import tiny_model

    return HookedMoE.from_hf(tiny_model("qwen3_moe", num_experts=64, num_experts_per_tok=4, num_hidden_layers=16))


def test_routing_map_64_experts_16_layers_renders_and_highlights(wide_model, tmp_path):
    from moelens.viz import routing_map

    ids = torch.randint(3, 97, (1, 24), generator=torch.Generator().manual_seed(0))
    view = routing_map(wide_model, ids)
    _, cache = wide_model.run_with_cache(ids)
    topk = cache.topk_indices()[:, 0]  # [moe_layer pos k]
    assert torch.equal(view.indices[0], topk.cpu())
    assert len(view.layers) == 16 and view.n_experts == 64
    layer_index, expert = 5, int(topk[5, 0, 0])
    expected_layer = int((topk[layer_index] == expert).any(-1).sum())
    expected_all = int((topk == expert).any(-1).sum())
    layer = view.layers[layer_index]
    path = view.save(tmp_path / "map.html")
    uid = view.uid
    report = load(path, wait_for=f"!!(window.moelensRoutingMaps && window.moelensRoutingMaps['{uid}'])", expressions={
        "cells": "document.querySelectorAll('td.rm-cell').length",
        "legend": "!!document.querySelector('.moelens-legend') && document.querySelector('[aria-label=legend]').textContent.includes('Legend')",
        "swatches": "document.querySelectorAll('.rm-swatch').length",
        # click the chip of `expert` in its first cell of `layer`: highlight within that layer
        "click": f"""(() => {{
            const cell = Array.from(document.querySelectorAll('td.rm-cell[data-layer="{layer}"]'))
                .find(c => c.getAttribute('data-experts').split(' ').map(Number).includes({expert}));
            cell.querySelector('.rm-id[data-expert="{expert}"]').click();
            return [document.querySelectorAll('td.rm-cell.rm-hl').length,
                    Array.from(document.querySelectorAll('td.rm-cell.rm-hl')).every(c => c.getAttribute('data-layer') === '{layer}'),
                    document.querySelector('.rm-detail').textContent.includes('router scores of all 64 experts'),
                    document.querySelectorAll('.rm-detail .rm-bar').length,
                    getComputedStyle(document.querySelector('td.rm-cell:not(.rm-hl)')).opacity];
        }})()""",
        "swatch": f"document.querySelector('.rm-swatch[data-expert=\"{expert}\"]').click() || document.querySelectorAll('td.rm-cell.rm-hl').length",
        "api": f"window.moelensRoutingMaps['{uid}'].select({expert}, null)",
    })
    assert report.console_errors == [], report.console_errors
    assert report.network_requests == [], report.network_requests
    assert report.values["cells"] == 16 * 24
    assert report.values["legend"] is True and report.values["swatches"] == 64
    hits, same_layer, detail, bars, dimmed = report.values["click"]
    assert hits == expected_layer and same_layer and detail and bars == 64 and float(dimmed) < 1
    assert report.values["swatch"] == expected_all == report.values["api"]


def test_routing_map_escapes_tokens_in_the_browser(tmp_path):
    from moelens import HookedMoE
    from moelens.viz import routing_map

    model = HookedMoE.from_pretrained("moelens/mixtral-tiny", dtype=torch.float32)
    view = routing_map(model, [HOSTILE, "2 + 2 = 4"])
    report = load(view.save(tmp_path / "hostile.html"), expressions={
        "pwned": "Object.getOwnPropertyNames(window).filter(k => k.startsWith('PWNED'))",
        "tokens": "Array.from(document.querySelectorAll('td.rm-token')).map(t => t.textContent).join('')",
        "images": "document.images.length",
    })
    assert report.console_errors == [] and report.network_requests == []
    assert report.values["pwned"] == [] and report.values["images"] == 0
    assert "<script>PWNED_MAP()</script>".replace(" ", "") in report.values["tokens"].replace("␣", "")
    assert "⏎" in report.values["tokens"]
