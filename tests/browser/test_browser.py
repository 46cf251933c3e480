"""Saved circuitsvis views and the analyze report, loaded from file:// in headless Chromium: the
widgets render (the DOM holds the token texts after the scripts ran), no JavaScript error is logged,
no network request is attempted, no payload runs, and the tables sort on a click.

Skips, saying why, where no Chromium/Chrome is installed (CI installs it: .ci/run).
"""

from __future__ import annotations

import re

import pytest
import torch

from tests.browser.chromium import find_browser, load

BROWSER = find_browser()
pytestmark = [
    pytest.mark.skipif(BROWSER is None, reason="no Chromium/Chrome found: `apt-get install chromium` (CI does) or set MOELENS_CHROMIUM"),
    pytest.mark.slow,
]
pytest.importorskip("websocket", reason="websocket-client (a test dependency) drives Chromium: pip install -e '.[test]'")

RENDERED = "Array.from(document.querySelectorAll('.moelens-view')).every(v => v.children.length > 0)"
PWNED = "Object.getOwnPropertyNames(window).filter(k => k.startsWith('PWNED'))"
HOSTILE = 'Good <script>PWNED_VIEW()</script> film "><img src=x onerror=PWNED_IMG()> <b>bold</b> & co.\nSecond line'


def _flat(text: str) -> str:
    """Whitespace-insensitive form (circuitsvis shows spaces as &nbsp; and newlines as breaks)."""
    return re.sub(r"\s+", "", text.replace("\xa0", " "))


@pytest.fixture(scope="module")
def model():
    from moelens import HookedMoE

    return HookedMoE.from_pretrained("moelens/mixtral-tiny", dtype=torch.float32)


def _check(report, n_views: int) -> None:
    assert report.values["views"] == n_views, report.values
    assert report.values["rendered"] is True, "a circuitsvis view did not render"
    assert report.console_errors == [], report.console_errors
    assert report.network_requests == [], report.network_requests
    assert report.values["pwned"] == [], f"a payload ran: {report.values['pwned']}"


def _load(path):
    return load(path, wait_for=RENDERED, expressions={
        "views": "document.querySelectorAll('.moelens-view').length", "rendered": RENDERED, "pwned": PWNED,
        "view_text": "Array.from(document.querySelectorAll('.moelens-view')).map(v => v.innerText)",
    })


def test_saved_views_render_offline(model, tmp_path):
    from moelens.viz import expert_tokens, readable_tokens, routing_tokens, token_values, visible_token

    tokens = readable_tokens(model.tokenizer, model.to_tokens(HOSTILE)[0].tolist())
    views = {
        "routing": routing_tokens(model, HOSTILE),
        "expert": expert_tokens(model, [HOSTILE, "2 + 2 = 4"], model.cfg.moe_layers[1], 2),
        "values": token_values(tokens, torch.linspace(-1, 1, len(tokens)), title="attribution"),
        "values2": token_values(tokens, torch.rand(len(tokens), 3), labels=["a", "b", "<c>"]),
    }
    for name, view in views.items():
        path = view.save(tmp_path / f"{name}.html")
        report = _load(path)
        _check(report, 1)
        shown = _flat(report.values["view_text"][0])
        visible = [visible_token(t) for t in tokens]  # whitespace tokens show as ␣ / ⏎
        assert _flat("".join(visible)) in shown and "⏎" in shown, (name, shown[:300])  # every token, as text, in order
        assert "<script>PWNED_VIEW()</script>" in report.values["view_text"][0].replace("\xa0", " ")


def test_report_renders_offline_and_no_payload_runs(tmp_path):
    from tests.unit.test_report_injection import PAYLOADS, build_hostile_report

    path = build_hostile_report(tmp_path / "report")
    sort = """(() => {
        const table = document.querySelector('#domain-experts table.sortable');
        const headers = Array.from(table.querySelectorAll('thead th'));
        const column = headers.findIndex(th => th.textContent === 'cwas');
        const read = () => Array.from(table.tBodies[0].rows).map(r => parseFloat(r.cells[column].getAttribute('data-value')));
        headers[column].click(); const up = read(); headers[column].click(); const down = read();
        return [up, down];
    })()"""
    report = load(path, wait_for=RENDERED, expressions={
        "views": "document.querySelectorAll('.moelens-view').length", "rendered": RENDERED, "pwned": PWNED,
        "sorted": sort, "h3": "Array.from(document.querySelectorAll('h3')).map(h => h.textContent)",
        "images": "Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length",
        "maps": "Object.keys(window.moelensRoutingMaps || {}).length",
        "legends": "document.querySelectorAll('.moelens-legend').length",
    })
    _check(report, 2)
    up, down = report.values["sorted"]
    assert up == sorted(up) and down == sorted(up, reverse=True) and len(up) > 3
    assert report.values["h3"] == [PAYLOADS["domain"], PAYLOADS["domain2"]] * 2  # domain names shown as text (token views, routing maps)
    assert report.values["maps"] == 2 and report.values["legends"] >= 2
    assert PAYLOADS["model"] in report.text
    embedded = path.read_text(encoding="utf-8").count('src="data:image/png;base64,')
    assert report.values["images"] == embedded >= 5  # every embedded figure decoded
    assert "PWNED_TEXT=1" in report.text.replace("\xa0", " ") or "PWNED" in _flat(report.text)


def test_the_checks_can_fail(tmp_path):
    """A page that asks the network for a script and throws: both are seen (so the passes above mean something)."""
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><html><body><p>x</p><script src='https://unpkg.com/circuitsvis/dist/cdn/esm.js'></script>"
                    "<img src='http://example.com/a.png'><script>window.PWNED_X = 1; undefinedFunction();</script></body></html>")
    report = load(page, expressions={"pwned": PWNED})
    assert any("unpkg.com" in url for url in report.network_requests) and any("example.com" in url for url in report.network_requests)
    assert any("undefinedFunction" in error for error in report.console_errors), report.console_errors
    assert report.values["pwned"] == ["PWNED_X"]
