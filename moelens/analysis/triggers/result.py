"""Result types of :func:`moelens.token_triggers`: the firing table and the early-vs-late test."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from moelens.errors import InvalidInputError
from moelens.lazy import pandas as pd
from moelens.results import Result, frame_from_json, frame_to_json
from moelens.stats import bootstrap_counts, bootstrap_p, percentile_ci

from .controls import matched_controls

__all__ = ["EarlyLate", "TokenTriggers"]

_TABLE = ("text", "position", "rank", "n_kept", "token_id", "fired", "gate")


@dataclass(frozen=True)
class EarlyLate(Result):
    """Do the selected experts fire more on the first decile of a text's tokens than on the rest?

    Rates pool the selected experts: firings / (tokens x experts). ``diff = rate_first - rate_rest``
    with a bootstrap ``ci`` over texts; ``last_diff`` does the same for the last decile (prompt
    templates put fixed tokens there). The control is every other expert of the model that fires at
    least once: ``control_share_early`` is the share of them with first-decile rate above their rest
    rate (``..._significant``: bootstrap interval above 0), to compare with ``drivers_share_early``;
    ``diff_vs_control`` is the pooled ``diff`` minus the control experts' mean ``diff``, with its CI.
    Every token selects exactly k experts per layer, so the other experts' mean ``diff`` tends to
    move opposite to the selected ones' and ``diff_vs_control`` overstates the contrast.

    The decision uses **matched controls**: for each selected expert, the ``n_matched`` unselected
    experts of the same layer whose overall firing rate is closest to its own.
    ``matched_diff = diff - (their mean diff)`` with a bootstrap ``matched_ci`` over texts.
    ``holds`` is True only when both ``ci`` and ``matched_ci`` exclude 0 from above (the selected
    experts fire more early, and more so than experts of the same layer and frequency);
    ``verdict`` is ``"holds"``, ``"does not hold"`` (``matched_ci`` or ``ci`` entirely at or below
    0) or ``"undecided"`` (an interval straddles 0).
    """

    rate_first: float
    rate_rest: float
    rate_last: float
    diff: float
    ci: tuple[float, float]
    last_diff: float
    last_ci: tuple[float, float]
    drivers_share_early: float
    drivers_share_early_significant: float
    control_share_early: float
    control_share_early_significant: float
    diff_vs_control: float
    diff_vs_control_ci: tuple[float, float]
    n_texts: int
    n_selected: int
    n_control: int
    level: float
    per_expert: pd.DataFrame
    matched_diff: float = float("nan")
    matched_ci: tuple[float, float] = (float("nan"), float("nan"))
    n_matched: int = 0
    matched_p: float = float("nan")  # two-sided bootstrap p of matched_diff (2 x the smaller tail around 0)

    @property
    def holds(self) -> bool:
        """True only when ``ci`` and ``matched_ci`` both lie above 0 (NaN intervals never hold)."""
        return bool(self.ci[0] > 0 and self.matched_ci[0] > 0)

    @property
    def verdict(self) -> str:
        """``"holds"``, ``"does not hold"`` or ``"undecided"``, from the two intervals."""
        if self.holds:
            return "holds"
        if self.matched_ci[1] <= 0 or self.ci[1] <= 0:
            return "does not hold"
        return "undecided"

    def to_frame(self) -> pd.DataFrame:
        """Per expert (selected first): ``layer, expert, selected, first, rest, last, diff, lo, hi, last_diff``."""
        return self.per_expert

    def summary(self) -> pd.DataFrame:
        """One row per statistic: ``statistic, value, lo, hi``."""
        rows = [
            ("rate first decile", self.rate_first, None, None), ("rate rest", self.rate_rest, None, None),
            ("rate last decile", self.rate_last, None, None), ("first - rest", self.diff, *self.ci),
            ("last - rest", self.last_diff, *self.last_ci),
            ("selected experts firing more early (share)", self.drivers_share_early, None, None),
            ("  ... significantly", self.drivers_share_early_significant, None, None),
            (f"control: other experts firing more early (share of {self.n_control})", self.control_share_early, None, None),
            ("  ... significantly", self.control_share_early_significant, None, None),
            ("(first - rest) minus control mean", self.diff_vs_control, *self.diff_vs_control_ci),
            (f"(first - rest) minus matched controls' ({self.n_matched} experts)", self.matched_diff, *self.matched_ci),
        ]
        return pd.DataFrame(rows, columns=["statistic", "value", "lo", "hi"])

    FORMAT, VERSION = "moelens.EarlyLate", 1

    def _draw(self, ax) -> None:
        """First decile, rest and last decile: the firing rates, and the two differences with their CIs."""
        labels = ["first - rest", "last - rest", "vs control"]
        values = [self.diff, self.last_diff, self.diff_vs_control]
        cis = [self.ci, self.last_ci, self.diff_vs_control_ci]
        err = np.array([[v - lo for v, (lo, _) in zip(values, cis, strict=True)], [hi - v for v, (_, hi) in zip(values, cis, strict=True)]])
        ax.bar(range(3), values, yerr=np.abs(err), color=["tab:green", "tab:orange", "tab:grey"], capsize=3)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(3), labels)
        ax.set_ylabel("firing-rate difference")
        ax.set_title(f"early vs late ({self.n_texts} texts, {self.level:.0%} CI)", fontsize=10)

    def _state(self) -> tuple[dict[str, Tensor], dict]:
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "per_expert"}
        return {}, {**meta, "per_expert": frame_to_json(self.per_expert)}

    @classmethod
    def _from_state(cls, tensors: dict[str, Tensor], meta: dict) -> EarlyLate:
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in meta.items() if k not in ("format", "version", "tensors")}
        return cls(**{**values, "per_expert": frame_from_json(meta["per_expert"])})

    def _html_table(self) -> pd.DataFrame:
        return self.summary()

    def __repr__(self) -> str:
        pct = f"{self.level:.0%}"
        return (
            f"EarlyLate(first {self.rate_first:.3f} vs rest {self.rate_rest:.3f}: diff {self.diff:+.3f} "
            f"[{pct} CI {self.ci[0]:+.3f}, {self.ci[1]:+.3f}]; last {self.last_diff:+.3f} [{self.last_ci[0]:+.3f}, "
            f"{self.last_ci[1]:+.3f}]; more early: selected {self.drivers_share_early:.0%} vs control "
            f"{self.control_share_early:.0%} of {self.n_control}; vs control {self.diff_vs_control:+.3f} "
            f"[{self.diff_vs_control_ci[0]:+.3f}, {self.diff_vs_control_ci[1]:+.3f}]; vs {self.n_matched} matched "
            f"{self.matched_diff:+.3f} [{self.matched_ci[0]:+.3f}, {self.matched_ci[1]:+.3f}]; {self.n_texts} texts; "
            f"holds={self.holds}, {self.verdict})"
        )


class TokenTriggers(Result):
    """Firing table of selected experts over the kept tokens of some texts (see
    :func:`moelens.token_triggers`).

    ``fired [token selected]`` (bool) and ``gate [token selected]`` (gate weight, 0 when not fired),
    with per token ``text``, ``position`` (in the tokenized text), ``rank`` (index among the text's
    kept tokens), ``n_kept`` and ``token_id``; ``seg_fires [text 3 moe_layer n_experts]`` and
    ``seg_tokens [text 3]`` count firings and tokens of every expert in the first decile, the middle
    and the last decile of each text.

    >>> from moelens import HookedMoE, token_triggers
    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
    >>> trig = token_triggers(model, torch.randint(3, 97, (6, 20)), [(1, 0), (1, 3)], progress=False)
    >>> trig.early_vs_late(n_boot=100).n_selected
    2
    """

    FORMAT, VERSION = "moelens.TokenTriggers", 1

    def __init__(self, selection, moe_layers, n_experts, table, seg_fires, seg_tokens, vocab, settings=None):
        self.selection = [(int(a), int(b)) for a, b in selection]
        self.moe_layers = tuple(int(x) for x in moe_layers)
        self.n_experts = int(n_experts)
        self.table = {k: table[k].cpu() for k in _TABLE}
        self.seg_fires = seg_fires.cpu()
        self.seg_tokens = seg_tokens.cpu()
        self.vocab = {int(k): v for k, v in vocab.items()}
        self.settings = dict(settings or {})

    fired = property(lambda self: self.table["fired"])
    gate = property(lambda self: self.table["gate"])

    @property
    def n_tokens(self) -> int:
        return len(self.table["token_id"])

    @property
    def n_texts(self) -> int:
        return self.seg_tokens.shape[0]

    # -- tables -----------------------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """The firing table, one row per (token, selected expert): ``text, position, rank, token_id,
        token, layer, expert, fired, gate``."""
        n_sel = len(self.selection)
        token_id = self.table["token_id"].numpy()
        return pd.DataFrame({
            **{k: np.repeat(self.table[k].numpy(), n_sel) for k in ("text", "position", "rank")},
            "token_id": np.repeat(token_id, n_sel),
            "token": np.repeat([self.vocab.get(int(t), "") for t in token_id], n_sel),
            "layer": np.tile([s[0] for s in self.selection], len(token_id)),
            "expert": np.tile([s[1] for s in self.selection], len(token_id)),
            "fired": self.fired.reshape(-1).numpy(),
            "gate": self.gate.reshape(-1).numpy(),
        })

    def top_tokens(self, n: int = 10, min_count: int = 5) -> pd.DataFrame:
        """Per selected expert, the ``n`` tokens with the highest firing rate among tokens seen at
        least ``min_count`` times (rare tokens cannot top the list): ``layer, expert, token_id,
        token, count, fires, rate, mean_gate`` (mean gate weight when fired)."""
        from moelens._checks import check_count

        check_count("n", n, 1)
        check_count("min_count", min_count, 1)
        ids, inverse = torch.unique(self.table["token_id"], return_inverse=True)
        count = torch.bincount(inverse, minlength=len(ids))
        frames = []
        for s, (layer, expert) in enumerate(self.selection):
            fired = self.fired[:, s]
            fires = torch.zeros(len(ids), dtype=torch.long).index_add_(0, inverse, fired.long())
            gate = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, inverse, self.gate[:, s].double())
            frame = pd.DataFrame({
                "layer": layer, "expert": expert, "token_id": ids.numpy(),
                "token": [self.vocab.get(int(i), "") for i in ids], "count": count.numpy(), "fires": fires.numpy(),
                "rate": (fires / count).numpy(), "mean_gate": (gate / fires.clamp_min(1)).numpy(),
            })
            frame = frame[frame["count"] >= min_count]
            frames.append(frame.sort_values(["rate", "count", "token_id"], ascending=[False, False, True]).head(n))
        return pd.concat(frames, ignore_index=True)

    def by_position(self, bins: int = 10) -> pd.DataFrame:
        """Firing rate per selected expert by relative position bin (``scale="relative"``, bin
        ``floor(bins * rank / n_kept)``) and by absolute token position (``scale="absolute"``):
        ``layer, expert, scale, bin, tokens, fires, rate``."""
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise InvalidInputError(f"bins={bins!r} must be a positive int.")
        relative = torch.div(bins * self.table["rank"], self.table["n_kept"].clamp_min(1), rounding_mode="floor")
        frames = []
        for scale, key, size in (("relative", relative, bins), ("absolute", self.table["position"], None)):
            if size is None:
                size = int(key.max()) + 1 if len(key) else 0
            tokens = torch.bincount(key, minlength=size)
            for s, (layer, expert) in enumerate(self.selection):
                fires = torch.zeros(size, dtype=torch.long).index_add_(0, key, self.fired[:, s].long())
                frames.append(pd.DataFrame({
                    "layer": layer, "expert": expert, "scale": scale, "bin": np.arange(size), "tokens": tokens.numpy(),
                    "fires": fires.numpy(), "rate": (fires / tokens.clamp_min(1)).numpy(),
                }))
        return pd.concat(frames, ignore_index=True)

    # -- the early-vs-late test -------------------------------------------------------------------
    def early_vs_late(self, n_boot: int = 1000, seed: int = 0, level: float = 0.95, n_matched: int = 3) -> EarlyLate:
        """First-decile firing rate of the selected experts vs the rest of the text, with a
        bootstrap CI over texts, the last decile, the control over every other expert and the
        ``n_matched`` frequency-matched controls per selected expert (see :class:`EarlyLate`)."""
        if isinstance(n_matched, bool) or not isinstance(n_matched, int) or n_matched < 1:
            raise InvalidInputError(f"n_matched={n_matched!r} must be a positive int (control experts per selected expert).")
        n_l, n_e = len(self.moe_layers), self.n_experts
        selected = torch.zeros(n_l, n_e, dtype=torch.bool)
        for layer, expert in self.selection:
            selected[self.moe_layers.index(layer), expert] = True
        selected = selected.reshape(-1)
        fires = self.seg_fires.double().reshape(self.n_texts, 3, -1)  # [text segment expert]
        tokens = self.seg_tokens.double()  # [text segment]
        control = ~selected & (fires.sum((0, 1)) > 0)
        counts = torch.cat([torch.ones(1, self.n_texts, dtype=torch.float64), bootstrap_counts(self.n_texts, n_boot, seed)])
        f = torch.einsum("bt,tse->bse", counts, fires)  # [1+boot segment expert], row 0 = the data
        t = counts @ tokens  # [1+boot segment]
        with np.errstate(all="ignore"):
            first, _mid, last = (f[:, i] / t[:, i : i + 1] for i in range(3))  # [1+boot expert]
            rest_f = (f[:, 1] + f[:, 2]) / (t[:, 1:2] + t[:, 2:3])
            rest_l = (f[:, 0] + f[:, 1]) / (t[:, 0:1] + t[:, 1:2])
        diff, last_diff = first - rest_f, last - rest_l  # [1+boot expert]
        pooled = selected.double() / selected.sum()
        d_pool, l_pool = diff @ pooled, last_diff @ pooled  # mean over selected = pooled rate difference
        d_ctrl = diff[:, control].mean(1) if control.any() else torch.full_like(d_pool, float("nan"))
        matched = matched_controls(selected, control, fires.sum((0, 1)) / tokens.sum().clamp_min(1), n_e, n_matched)
        d_match = diff[:, matched].mean(1) if len(matched) else torch.full_like(d_pool, float("nan"))
        lo_e, hi_e = torch.quantile(diff[1:].nan_to_num(0.0), torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64), dim=0)

        def share(mask: Tensor, values: Tensor) -> float:
            return float((values[mask] > 0).double().mean()) if mask.any() else float("nan")

        layers = np.repeat(np.array(self.moe_layers), n_e)
        per_expert = pd.DataFrame({
            "layer": layers, "expert": np.tile(np.arange(n_e), n_l), "selected": selected.numpy(),
            "first": first[0].numpy(), "rest": rest_f[0].numpy(), "last": last[0].numpy(), "diff": diff[0].numpy(),
            "lo": lo_e.numpy(), "hi": hi_e.numpy(), "last_diff": last_diff[0].numpy(),
        })
        per_expert = per_expert[selected.numpy() | control.numpy()].sort_values(["selected", "diff"], ascending=[False, False])
        return EarlyLate(
            rate_first=float(first[0] @ pooled), rate_rest=float(rest_f[0] @ pooled), rate_last=float(last[0] @ pooled),
            diff=float(d_pool[0]), ci=percentile_ci(d_pool[1:], level),
            last_diff=float(l_pool[0]), last_ci=percentile_ci(l_pool[1:], level),
            drivers_share_early=share(selected, diff[0]), drivers_share_early_significant=share(selected, lo_e),
            control_share_early=share(control, diff[0]), control_share_early_significant=share(control, lo_e),
            diff_vs_control=float(d_pool[0] - d_ctrl[0]), diff_vs_control_ci=percentile_ci(d_pool[1:] - d_ctrl[1:], level),
            n_texts=self.n_texts, n_selected=int(selected.sum()), n_control=int(control.sum()), level=level,
            per_expert=per_expert.reset_index(drop=True),
            matched_diff=float(d_pool[0] - d_match[0]), matched_ci=percentile_ci(d_pool[1:] - d_match[1:], level),
            n_matched=len(set(matched.tolist())), matched_p=bootstrap_p(d_pool[1:] - d_match[1:]),
        )

    # -- plots ------------------------------------------------------------------------------------
    FIGSIZE = (6.5, 3.6)

    def _draw(self, ax, bins: int = 10) -> None:
        """Firing rate by relative position bin: each selected expert (thin), their mean (thick);
        first and last deciles shaded."""
        frame = self.by_position(bins)
        frame = frame[frame.scale == "relative"]
        centres = (np.arange(bins) + 0.5) / bins
        for (layer, expert), group in frame.groupby(["layer", "expert"]):
            ax.plot(centres, group["rate"], lw=0.8, alpha=0.6, label=f"L{layer}E{expert}" if len(self.selection) <= 10 else None)
        ax.plot(centres, frame.groupby("bin")["rate"].mean().to_numpy(), lw=2.5, color="black", label="mean of selected")
        ax.axvspan(0, 0.1, color="tab:green", alpha=0.1, lw=0, label="first decile")
        ax.axvspan(0.9, 1.0, color="tab:orange", alpha=0.1, lw=0, label="last decile")
        ax.set_xlabel("relative position in the text (special tokens excluded)")
        ax.set_ylabel("firing rate (in top-k)")
        ax.set_title(f"token triggers of {len(self.selection)} experts over {self.n_texts} texts", fontsize=10)
        ax.legend(fontsize=7, frameon=False, ncol=2)

    # -- persistence (Result.save / Result.load) ---------------------------------------------------
    def _state(self) -> tuple[dict[str, Tensor], dict]:
        tensors = {**self.table, "seg_fires": self.seg_fires, "seg_tokens": self.seg_tokens}
        meta = {"selection": self.selection, "moe_layers": list(self.moe_layers),
                "n_experts": self.n_experts, "vocab": {str(k): v for k, v in self.vocab.items()}, "settings": self.settings}
        return tensors, meta

    @classmethod
    def _from_state(cls, tensors: dict[str, Tensor], meta: dict) -> TokenTriggers:
        table = {k: tensors[k] for k in _TABLE}
        return cls(meta["selection"], meta["moe_layers"], meta["n_experts"], table, tensors["seg_fires"],
                   tensors["seg_tokens"], meta["vocab"], meta.get("settings", {}))

    def _html_table(self) -> pd.DataFrame:
        return self.top_tokens(5, min_count=1)

    def __repr__(self) -> str:
        shown = ", ".join(f"L{a}E{b}" for a, b in self.selection[:4]) + (", ..." if len(self.selection) > 4 else "")
        return f"TokenTriggers({len(self.selection)} experts [{shown}], {self.n_texts} texts, {self.n_tokens} tokens)"
