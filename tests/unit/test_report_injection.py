"""Issue #16 item 4: a report built from hostile domain names, a hostile model path and hostile
texts holds no element, attribute or script that came from the payloads (parsed, not grepped),
and shows each payload as text. tests/browser loads the same report in Chromium."""

from __future__ import annotations

import json
import os
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moelens.cli import app
from moelens.zoo import resolve

# Each payload that runs sets a global or calls an undefined function (a JS error): the browser test
# checks for both. Domain names cannot hold "=" (the CLI splits DOMAIN=PATH at the first one).
PAYLOADS = {
    "domain": "<script>PWNED_DOMAIN()</script>",
    "domain2": '"><img src onerror><b title "x',
    "model": '"><svg onload=window.PWNED_MODEL=1>',
    "text": "</script><script>window.PWNED_TEXT=1</script> <iframe srcdoc=x></iframe> the film was great",
    "text2": "<img/src=x/onerror=window.PWNED_TEXT2=1> <b>bold</b> & done",
}
ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "script", "body", "h1", "h2", "h3", "nav", "a", "section", "p", "b",
    "i", "ul", "li", "table", "caption", "thead", "tbody", "tr", "th", "td", "img", "div", "svg", "rect", "text",
    "span", "label", "select", "option", "input", "button",  # the routing map's controls and cells
}


def build_hostile_report(out: Path) -> Path:
    """Run ``moelens analyze`` on the payloads; returns report.html."""
    zoo = resolve("moelens/mixtral-tiny")
    if zoo is None:
        pytest.skip("the zoo model moelens/mixtral-tiny is not packaged in this checkout")
    out.mkdir(parents=True, exist_ok=True)
    model_dir = out.parent / PAYLOADS["model"]
    if not model_dir.exists():
        os.symlink(zoo, model_dir)
    data_1, data_2 = out.parent / "d1.jsonl", out.parent / "d2.jsonl"
    data_1.write_text("\n".join(json.dumps({"dataset": "sst2", "text": t, "label": 1, "label_text": "positive"}) for t in (PAYLOADS["text"], "plain words")) + "\n")
    data_2.write_text("\n".join(json.dumps({"dataset": "sst2", "text": t, "label": 1, "label_text": "positive"}) for t in (PAYLOADS["text2"], "2 + 2 = 4")) + "\n")
    result = CliRunner().invoke(app, [
        "analyze", "--model", str(model_dir), "--out", str(out),
        "--data", f"{PAYLOADS['domain']}={data_1}", "--data", f"{PAYLOADS['domain2']}={data_2}",
    ])
    assert result.exit_code == 0, result.output
    return out / "report.html"


class _Elements(HTMLParser):
    """Every start tag with its attributes, and the text of every script element."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict, str]] = []
        self.text: list[str] = []
        self._in_script: dict | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = dict(attrs)
            self.scripts.append((self._in_script, ""))

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = None

    def handle_data(self, data):
        if self._in_script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)
        else:
            self.text.append(data)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[str, _Elements]:
    page = build_hostile_report(tmp_path_factory.mktemp("hostile") / "report").read_text(encoding="utf-8")
    parsed = _Elements()
    parsed.feed(page)
    return page, parsed


def test_no_element_or_attribute_comes_from_a_payload(hostile):
    _, parsed = hostile
    tags = {tag for tag, _ in parsed.tags}
    assert tags <= ALLOWED_TAGS, f"unexpected elements {tags - ALLOWED_TAGS}"
    for tag, attrs in parsed.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)  # no inline handler anywhere
        assert not any(name in ("srcdoc", "src") and tag != "img" for name in attrs), (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,"), attrs
        assert all("PWNED" not in (value or "") for name, value in attrs.items() if name != "alt"), (tag, attrs)


def test_every_script_is_one_moelens_wrote(hostile):
    _, parsed = hostile
    kinds = []
    for attrs, text in parsed.scripts:
        if attrs.get("data-moelens") == "circuitsvis-bundle":
            kinds.append("bundle")
        elif text.startswith("CircuitsVis.render(") and text.count(";") >= 1:
            kinds.append("view")
            assert "<" not in text and "PWNED_TEXT=1</script>" not in text  # payloads only as JSON-escaped data
        elif "table.sortable" in text:
            kinds.append("sort")
        elif text.startswith("\n(function () {\n  if (window.moelensRoutingMapInit)"):
            kinds.append("map-code")
        elif text.startswith('window.moelensRoutingMapInit("moelens-routing-map-'):
            kinds.append("map")
            assert "<" not in text and "PWNED" not in text  # the payload's tokens are not in the scores payload
        else:
            pytest.fail(f"a script moelens did not write: {text[:200]!r}")
    assert kinds.count("bundle") == 1 and kinds.count("sort") == 1 and kinds.count("view") == 2
    assert kinds.count("map") == 2 and kinds.count("map-code") == 2  # one routing map per domain


def test_payloads_show_as_text(hostile):
    page, parsed = hostile
    text = "".join(parsed.text)
    for key in ("domain", "domain2", "model"):
        assert PAYLOADS[key] in text, key  # the user sees exactly what they typed
    for payload in PAYLOADS.values():
        assert payload not in page  # never raw in the source
