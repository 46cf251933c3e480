"""Style and script of :func:`moelens.viz.routing_map` (a small component of our own, see there why).

Plain CSS and DOM code, no library and no network. The script reads each map's data from its cells'
``data-*`` attributes and from one escaped JSON payload (:func:`moelens.viz.html.script_json`), and
writes text into the page only through ``textContent``, never ``innerHTML``: a token or an id can
never become markup. It is defined once per page (guarded) and every map registers itself in
``window.moelensRoutingMaps[id]`` with ``select(expert, layer)``, ``clear()`` and ``setMode(mode)``.
"""

from __future__ import annotations

from .html import Markup

__all__ = ["ROUTING_MAP_SCRIPT", "ROUTING_MAP_STYLE"]

ROUTING_MAP_STYLE = Markup("""<style>
.moelens-routing-map { font-family: system-ui, sans-serif; font-size: 13px; color: #222; margin: 0.5em 0 1.5em; }
.moelens-routing-map .rm-title { font-weight: 600; margin-bottom: 0.3em; }
.moelens-routing-map .rm-controls { display: flex; flex-wrap: wrap; gap: 0.4em 1em; align-items: center; margin: 0.3em 0; }
.moelens-routing-map .rm-controls input { width: 5em; }
.moelens-routing-map .moelens-legend { display: flex; flex-wrap: wrap; gap: 0.3em 1.2em; align-items: center; margin: 0.3em 0 0.5em; font-size: 12px; }
.moelens-routing-map .rm-ramp { display: inline-block; width: 120px; height: 12px; vertical-align: middle; border: 1px solid #bbb;
  background: linear-gradient(to right, rgba(37,99,235,0.12), rgba(37,99,235,1)); }
.moelens-routing-map .rm-swatches { display: inline-flex; flex-wrap: wrap; gap: 2px; max-width: 100%; }
.moelens-routing-map .rm-swatch { font: 10px/14px ui-monospace, monospace; min-width: 16px; text-align: center; cursor: pointer;
  background: hsl(var(--h), 70%, var(--l)); border-radius: 2px; padding: 0 2px; }
.moelens-routing-map .rm-scroll { overflow: auto; max-height: 75vh; border: 1px solid #ddd; margin-bottom: 0.6em; }
.moelens-routing-map table.rm-grid { border-collapse: separate; border-spacing: 0; font-size: 11px; margin: 0; }
.moelens-routing-map .rm-grid th, .moelens-routing-map .rm-grid td { border: 0; border-bottom: 1px solid #eee; border-left: 1px solid #f3f3f3;
  padding: 1px 3px; text-align: left; white-space: nowrap; }
.moelens-routing-map .rm-grid thead th { position: sticky; top: 0; background: #f6f6f6; z-index: 2; font-weight: 600; }
.moelens-routing-map .rm-grid .rm-token, .moelens-routing-map .rm-grid thead th.rm-token-head { position: sticky; left: 0; background: #fafafa;
  z-index: 1; font-family: ui-monospace, monospace; max-width: 14em; overflow: hidden; text-overflow: ellipsis; }
.moelens-routing-map .rm-grid thead th.rm-token-head { z-index: 3; }
.moelens-routing-map .rm-grid .rm-pos { color: #888; text-align: right; }
.moelens-routing-map .rm-token.rm-special { color: #7c3aed; font-style: italic; }
.moelens-routing-map .rm-grid .rm-group-start { border-left: 2px solid #bbb; }
.moelens-routing-map .rm-grid td.rm-cell { cursor: pointer; white-space: normal; line-height: 15px;
  width: calc(var(--chips, 2) * 21px); min-width: calc(var(--chips, 2) * 21px); }
.moelens-routing-map .rm-id { display: inline-block; font: 10px/13px ui-monospace, monospace; min-width: 14px; text-align: center;
  border-radius: 2px; margin: 0 1px 1px 0; padding: 0 1px; }
.moelens-routing-map.rm-mode-weight .rm-id { background: rgba(37, 99, 235, calc(0.12 + 0.88 * var(--w))); }
.moelens-routing-map.rm-mode-weight .rm-id.rm-dark { color: #fff; }
.moelens-routing-map.rm-mode-expert .rm-id { background: hsl(var(--h), 70%, var(--l)); }
.moelens-routing-map .rm-more { color: #888; font-size: 10px; }
.moelens-routing-map.rm-selecting .rm-cell { opacity: 0.3; }
.moelens-routing-map.rm-selecting .rm-cell.rm-hl { opacity: 1; outline: 2px solid #d97706; outline-offset: -2px; background: #fff7e6; }
.moelens-routing-map .rm-id.rm-id-hl { outline: 2px solid #111; }
.moelens-routing-map .rm-cell.rm-pinned { box-shadow: inset 0 0 0 2px #111; }
.moelens-routing-map .rm-detail { border: 1px solid #ddd; background: #fcfcfc; padding: 0.4em 0.6em; min-height: 3.2em; font-size: 12px; }
.moelens-routing-map .rm-bars { display: flex; align-items: flex-end; height: 48px; gap: 1px; margin-top: 0.3em; }
.moelens-routing-map .rm-bar { flex: 1 1 0; min-width: 2px; max-width: 14px; background: #cbd5e1; }
.moelens-routing-map .rm-bar.rm-bar-chosen { background: #2563eb; }
</style>""")

ROUTING_MAP_SCRIPT = Markup("""<script>
(function () {
  if (window.moelensRoutingMapInit) { return; }
  window.moelensRoutingMaps = window.moelensRoutingMaps || {};
  window.moelensRoutingMapInit = function (uid, data) {
    var root = document.getElementById(uid);
    if (!root) { return; }
    var cells = Array.prototype.slice.call(root.querySelectorAll("td.rm-cell"));
    var detail = root.querySelector(".rm-detail"), count = root.querySelector(".rm-count");
    var expertInput = root.querySelector(".rm-expert-input"), layerSelect = root.querySelector(".rm-layer-select");
    var pinned = null;
    function experts(cell) { return cell.getAttribute("data-experts").split(" ").map(Number); }
    function text(tag, value, cls) { var node = document.createElement(tag); node.textContent = value; if (cls) { node.className = cls; } return node; }
    function show(cell) {
      var seq = Number(cell.getAttribute("data-seq")), li = Number(cell.getAttribute("data-layer-index"));
      var pos = Number(cell.getAttribute("data-pos")), chosen = experts(cell);
      var weights = cell.getAttribute("data-weights").split(" ");
      while (detail.firstChild) { detail.removeChild(detail.firstChild); }
      var token = cell.parentNode.querySelector(".rm-token");
      var head = "token " + (token ? token.textContent : "") + " (position " + pos + "), MoE layer " + cell.getAttribute("data-layer") + ": chose ";
      detail.appendChild(text("div", head + chosen.map(function (e, i) { return "expert " + e + " (weight " + weights[i] + ")"; }).join(", ")));
      var scores = data.scores ? data.scores[seq][li][pos] : null;
      if (!scores) { detail.appendChild(text("div", "router scores were not cached", "rm-note")); return; }
      var order = scores.map(function (s, e) { return [s, e]; }).sort(function (a, b) { return b[0] - a[0]; }).slice(0, 12);
      detail.appendChild(text("div", "router scores of all " + scores.length + " experts (bars, expert 0 on the left; chosen in blue); highest: " +
        order.map(function (p) { return p[1] + ": " + (p[0] / 1000).toFixed(3); }).join(", ")));
      var bars = document.createElement("div"); bars.className = "rm-bars";
      var top = Math.max.apply(null, scores) || 1;
      scores.forEach(function (s, e) {
        var bar = document.createElement("div");
        bar.className = "rm-bar" + (chosen.indexOf(e) >= 0 ? " rm-bar-chosen" : "");
        bar.style.height = Math.max(1, Math.round(48 * s / top)) + "px";
        bar.title = "expert " + e + ": " + (s / 1000).toFixed(3);
        bars.appendChild(bar);
      });
      detail.appendChild(bars);
    }
    function clear() {
      root.classList.remove("rm-selecting");
      cells.forEach(function (c) { c.classList.remove("rm-hl"); c.removeAttribute("data-highlight"); });
      root.querySelectorAll(".rm-id-hl").forEach(function (n) { n.classList.remove("rm-id-hl"); });
      if (count) { count.textContent = ""; }
    }
    function select(expert, layer) {
      clear();
      expert = Number(expert);
      if (isNaN(expert) || expert < 0 || expert >= data.n_experts) { return 0; }
      var hits = 0, scope = (layer === null || layer === undefined || layer === "") ? null : String(layer);
      root.classList.add("rm-selecting");
      cells.forEach(function (c) {
        if (scope !== null && c.getAttribute("data-layer") !== scope) { return; }
        if (experts(c).indexOf(expert) < 0) { return; }
        c.classList.add("rm-hl"); c.setAttribute("data-highlight", "true"); hits += 1;
        c.querySelectorAll(".rm-id").forEach(function (n) { if (Number(n.getAttribute("data-expert")) === expert) { n.classList.add("rm-id-hl"); } });
      });
      if (expertInput) { expertInput.value = expert; }
      if (layerSelect) { layerSelect.value = scope === null ? "" : scope; }
      if (count) { count.textContent = "expert " + expert + (scope === null ? " (every layer)" : " of layer " + scope) + ": " + hits + " cell" + (hits === 1 ? "" : "s"); }
      return hits;
    }
    function setMode(mode) {
      root.classList.remove("rm-mode-weight", "rm-mode-expert");
      root.classList.add(mode === "expert" ? "rm-mode-expert" : "rm-mode-weight");
    }
    cells.forEach(function (cell) {
      cell.addEventListener("mouseenter", function () { if (!pinned) { show(cell); } });
      cell.addEventListener("click", function (event) {
        if (pinned) { pinned.classList.remove("rm-pinned"); }
        pinned = pinned === cell ? null : cell;
        if (pinned) { pinned.classList.add("rm-pinned"); }
        show(cell);
        var id = event.target.closest ? event.target.closest(".rm-id") : null;
        if (id) { select(id.getAttribute("data-expert"), cell.getAttribute("data-layer")); }
      });
    });
    root.querySelectorAll(".rm-swatch").forEach(function (s) { s.addEventListener("click", function () { select(s.getAttribute("data-expert"), null); }); });
    var modeSelect = root.querySelector(".rm-mode");
    if (modeSelect) { modeSelect.addEventListener("change", function () { setMode(modeSelect.value); }); }
    function fromControls() { if (expertInput.value === "") { clear(); } else { select(expertInput.value, layerSelect.value); } }
    if (expertInput) { expertInput.addEventListener("input", fromControls); layerSelect.addEventListener("change", fromControls); }
    var button = root.querySelector(".rm-clear");
    if (button) { button.addEventListener("click", function () { expertInput.value = ""; clear(); }); }
    window.moelensRoutingMaps[uid] = { select: select, clear: clear, setMode: setMode };
  };
})();
</script>""")
