"""Report sections of ``moelens analyze`` for token triggers and routing mediation.

Each function returns an HTML fragment; :func:`write_sections` writes both into a report folder
(the CLI calls it after the driver step).
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moelens.model import HookedMoE

__all__ = ["driver_layers_html", "mediation_html", "sentiment_pair", "triggers_html", "write_sections"]

# Positive -> negative swaps (all pairs move the answer the same way, so averages over pairs mean
# something); a pair is used only if both sides tokenize to one length.
_SWAPS = {
    " good": " bad", " great": " awful", " best": " worst", " funny": " dull", " beautiful": " ugly",
    " terrific": " terrible", " warm": " cold", " brilliant": " boring", " gem": " mess", " fun": " dull",
    " love": " hate", " wonderful": " dreadful", " excellent": " terrible", " charming": " annoying",
}


def triggers_html(model: HookedMoE, texts: list[str], effects: Any, n_drivers: int = 10) -> str:
    """Token triggers of the ``n_drivers`` strongest drivers with the early-vs-late test."""
    from moelens.report import figure_html, table_html
    from moelens.viz.findings import caveat_html, caveat_sentences, plural

    from ..triggers import token_triggers

    top = effects.top(n_drivers)
    trig = token_triggers(model, texts, top, progress=False)
    res = trig.early_vs_late()
    verdict = res.verdict
    summary = res.summary()
    return (
        f"<p>Does the paper's claim \"early tokens trigger driver experts\" hold here? Firing rate of the top "
        f"{len(top)} drivers (by effect) on the first decile of each text's tokens vs the rest, special tokens "
        f"(BOS, ...) excluded, {plural(res.n_texts, 'text')}; {res.level:.0%} bootstrap intervals over texts. The control is "
        f"every other expert: {res.control_share_early:.0%} of them also fire more on the first decile. "
        f"Verdict (decided by the intervals): <b>{verdict}</b> (first - rest {res.diff:+.4f} [{res.ci[0]:+.4f}, "
        f"{res.ci[1]:+.4f}], beyond {res.n_matched} frequency-matched control experts of the same layers by "
        f"{res.matched_diff:+.4f} [{res.matched_ci[0]:+.4f}, {res.matched_ci[1]:+.4f}]; beyond the mean of all "
        f"others by {res.diff_vs_control:+.4f}). The last decile is reported too: prompt templates put fixed tokens "
        f"there.</p>"
        + table_html(summary, "{:+.4f}", missing="no interval: the bootstrap intervals are computed for the differences only")
        + figure_html(trig.plot(), "firing rate by position")
        + "<p class='note'>Tokens with the highest firing rate (seen at least 5 times; ␣ space, ⏎ newline):</p>"
        + table_html(_visible_tokens(trig.top_tokens(3, min_count=5)), "{:.3f}")
        + caveat_html(caveat_sentences(intervals={"first - rest": res.ci, "(first - rest) beyond the control": res.diff_vs_control_ci}))
    )


def _visible_tokens(frame):
    """The ``token`` column with whitespace made visible (a blank cell says nothing)."""
    from moelens.viz.tokens import visible_token

    return frame.assign(token=[visible_token(str(t), edges=True) for t in frame["token"]]) if "token" in frame else frame


def driver_layers_html(effects: Any) -> str:
    """Per-layer shares of the driver effect with bootstrap intervals over inputs, the median-based
    share and the largest single input's share (driver effects are heavy-tailed over inputs)."""
    from moelens.report import table_html

    if effects.per_input is None or effects.per_input.shape[0] < 2:
        return "<p class='note'>Per-input effects are needed (driver_effects(..., per_input=True), two inputs or more).</p>"
    shares = effects.layer_shares()
    top = float(effects.input_shares().max())
    return (
        f"<p>Share of the summed driver effect per layer, with 95% bootstrap intervals over the {effects.n_inputs} "
        f"inputs; <i>median_share</i> uses per-expert medians over inputs, <i>top_input_share</i> is the largest "
        f"single input's part of the layer's effect. The largest input holds <b>{top:.0%}</b> of the whole effect: "
        f"when it is large, the mean-based shares describe that input rather than the data.</p>"
        + table_html(shares, "{:.3f}")
    )


def sentiment_pair(model: HookedMoE, data: dict[str, list[str]]) -> tuple[str, str, str] | None:
    """``(clean, corrupted, swapped word)``: a review prompt from ``data`` (the sentiment domain
    first) and the same prompt with one sentiment word swapped, of equal token length; or None."""
    domains = sorted(data, key=lambda d: d != "sentiment")
    for domain in domains:
        for text in data[domain]:
            prompt = text[: text.rfind("Sentiment:") + len("Sentiment:")] if "Sentiment:" in text else text
            for word, other in _SWAPS.items():
                if re.search(re.escape(word) + r"\b", prompt) is None:
                    continue
                swapped = re.sub(re.escape(word) + r"\b", other, prompt, count=1)
                if len(model.to_tokens(prompt, truncate=False)[0]) == len(model.to_tokens(swapped, truncate=False)[0]):
                    return prompt, swapped, f"{word.strip()} -> {other.strip()}"
    return None


def mediation_html(model: HookedMoE, data: dict[str, list[str]]) -> str:
    """How much of a one-word sentiment flip reaches the answer through routing."""
    from moelens.errors import InvalidInputError
    from moelens.report import figure_html, table_html

    from .run import logit_diff, routing_mediation

    pair = sentiment_pair(model, data)
    if pair is None:
        return "<p class='note'>No review in the data has a sentiment word whose swap keeps the token length; no example.</p>"
    clean, corrupted, swap = pair
    try:
        metric, name = logit_diff(model, " positive", " negative"), "logit(' positive') - logit(' negative')"
    except InvalidInputError:  # a tokenizer that splits the answers: fall back to the KL of the last position
        metric, name = None, "KL of the next-token distribution"
    med = routing_mediation(model, [clean], [corrupted], metric=metric, progress=False)
    return (
        f"<p>Clean: <code>{html.escape(clean)}</code><br>Corrupted ({html.escape(swap)}): "
        f"<code>{html.escape(corrupted)}</code><br>Metric: {html.escape(name)} at the last position. Total effect "
        f"<b>{med.total:+.3f}</b>; through all routing (every MoE layer's top-k and weights patched from the corrupted "
        f"run) <b>{med.all_routing:+.3f}</b>; direct (not through routing decisions) <b>{med.direct:+.3f}</b>.</p>"
        + table_html(med.summary(), "{:+.4f}") + figure_html(med.plot(), "mediation")
        + "<p class='note'>Experts whose routing carries most of the change (indirect effect of patching one "
        "expert's gate at every position; rank 1 carries most):</p>" + table_html(med.top(5), "{:+.4f}")
        + "<p class='caveat'><b>Caveat: </b>one clean/corrupted pair: an example of the method, not an estimate over "
        "data; run moelens.routing_mediation on many pairs before drawing a conclusion.</p>"
    )


def write_sections(model: HookedMoE, data: dict[str, list[str]], out: str | Path, effects: Any, per_domain: int = 16) -> None:
    """Write the token-trigger and mediation sections into ``out`` (see :mod:`moelens.report`)."""
    from moelens.report import write_section

    texts = [t for domain_texts in data.values() for t in domain_texts[:per_domain]]
    write_section(out, "Driver effects per layer (robust)", driver_layers_html(effects))
    write_section(out, "Token triggers of driver experts", triggers_html(model, texts, effects))
    write_section(out, "Mediation through routing", mediation_html(model, data))
