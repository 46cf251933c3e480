"""Dataset-level routing statistics per (domain, MoE layer, expert): a streaming container.

``RoutingStats`` only holds additive aggregates (see :class:`moelens.metrics.RoutingSums`) and
derives every metric from them, so shards collected on different machines merge exactly and a
saved file holds everything. The loop that runs a model and feeds it lives elsewhere
(``moelens.collect_routing_stats``); it calls :meth:`RoutingStats.accumulate` once per batch and
MoE layer (or :meth:`RoutingStats.accumulate_layers` once per batch with stacked layers).

Metric definitions are in :mod:`moelens.metrics` (a reconstruction of arXiv 2601.10159).

>>> import torch
>>> from moelens.metrics import topk_mask_from_indices
>>> stats = RoutingStats(["code", "prose"], moe_layers=(1,), n_experts=4, top_k=1)
>>> topk = topk_mask_from_indices(torch.tensor([[[0], [0], [1]]]), 4)  # [batch pos n_experts]
>>> stats.accumulate("code", 1, topk, torch.full((1, 3, 4), 0.25))
>>> stats.activation_rate[0, 0].tolist()  # [domain moe_layer expert]
[0.6666666666666666, 0.3333333333333333, 0.0, 0.0]
"""

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from jaxtyping import Bool, Float, Shaped
from torch import Tensor

from moelens.errors import InvalidInputError, ResultFileError
from moelens.metrics import RoutingSums, cwas, domain_specificity, routing_sums
from moelens.results import Result, load_sidecar, sidecar_paths

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SUM_FIELDS", "RoutingStats"]

SUM_FIELDS = ("n_tokens", "counts", "entropy_sums", "score_sums")  # what save(), merge() and checkpoints carry




class RoutingStats(Result):
    """Running routing aggregates for ``domains x moe_layers x n_experts``.

    Stored tensors (CPU; exact integer counts, float64 sums):

    - ``n_tokens [domain moe_layer]`` int64: non-padding tokens seen (kept per layer, so a loop
      that accumulates layer by layer stays exact even if it skips one);
    - ``counts [domain moe_layer expert]`` int64: tokens whose top-k contains the expert;
    - ``entropy_sums [domain moe_layer expert]``: sum over routed tokens of normalised entropy;
    - ``score_sums [domain moe_layer expert]``: sum of the raw router score over all tokens.

    ``moe_layers`` are model layer indices (the ``L`` in ``blocks.{L}.moe``), not positions.

    >>> stats = RoutingStats(["math", "prose"], moe_layers=(0, 1), n_experts=8, top_k=2)
    >>> stats.cwas().shape  # [domain moe_layer expert]
    torch.Size([2, 2, 8])
    """

    FORMAT, VERSION = "moelens.RoutingStats", 1

    def __init__(
        self,
        domains: Sequence[str],
        moe_layers: Sequence[int],
        n_experts: int,
        top_k: int | None = None,
    ) -> None:
        domains = tuple(domains)
        if not domains or len(set(domains)) != len(domains) or not all(
            isinstance(d, str) for d in domains
        ):
            raise InvalidInputError(f"domains must be unique non-empty strings, got {list(domains)}.")
        moe_layers = tuple(int(layer) for layer in moe_layers)
        if not moe_layers or len(set(moe_layers)) != len(moe_layers):
            raise InvalidInputError(f"moe_layers must be unique layer indices, got {list(moe_layers)}.")
        if int(n_experts) < 1 or (top_k is not None and not 1 <= int(top_k) <= int(n_experts)):
            raise InvalidInputError(
                f"need 1 <= top_k <= n_experts, got top_k={top_k}, n_experts={n_experts}."
            )
        self.domains: tuple[str, ...] = domains
        self.moe_layers: tuple[int, ...] = moe_layers
        self.n_experts = int(n_experts)
        self.top_k = None if top_k is None else int(top_k)
        shape = (len(domains), len(moe_layers), self.n_experts)
        self.n_tokens = torch.zeros(shape[:2], dtype=torch.int64)
        self.counts = torch.zeros(shape, dtype=torch.int64)
        self.entropy_sums = torch.zeros(shape, dtype=torch.float64)
        self.score_sums = torch.zeros(shape, dtype=torch.float64)

    @classmethod
    def from_config(cls, cfg, domains: Sequence[str]) -> "RoutingStats":
        """Empty stats shaped for a model (``cfg`` has moe_layers, n_experts, top_k)."""
        return cls(domains, cfg.moe_layers, cfg.n_experts, cfg.top_k)

    # ------------------------------------------------------------------ accumulation
    def _domain_index(self, domain: str) -> int:
        if domain not in self.domains:
            raise InvalidInputError(
                f"unknown domain {domain!r}; this RoutingStats has {list(self.domains)}."
            )
        return self.domains.index(domain)

    def _index(self, domain: str, layer: int) -> tuple[int, int]:
        d = self._domain_index(domain)
        if layer not in self.moe_layers:
            raise InvalidInputError(
                f"layer {layer} is not an MoE layer; moe_layers are {list(self.moe_layers)} "
                f"(model layer indices, as in blocks.{{L}}.moe, not positions in that list)."
            )
        return d, self.moe_layers.index(layer)

    def add(self, domain: str, layer: int, sums: RoutingSums) -> None:
        """Add precomputed :func:`~moelens.metrics.routing_sums` of one batch at one layer."""
        d, li = self._index(domain, layer)
        if sums.counts.shape != (self.n_experts,):
            raise InvalidInputError(
                f"sums.counts has shape {tuple(sums.counts.shape)}, expected ({self.n_experts},): "
                f"pass the sums of one layer, over all {self.n_experts} experts."
            )
        self.n_tokens[d, li] += int(sums.n_tokens)
        self.counts[d, li] += sums.counts.cpu()
        self.entropy_sums[d, li] += sums.entropy_sums.cpu().double()
        self.score_sums[d, li] += sums.score_sums.cpu().double()

    def accumulate(
        self,
        domain: str,
        layer: int,
        topk_mask: Bool[Tensor, "*batch n_experts"],
        scores: Float[Tensor, "*batch n_experts"],
        mask: Shaped[Tensor, "*batch"] | None = None,  # bool, or the 0/1 attention mask
    ) -> None:
        """Add one batch of one MoE layer: the interface a model loop calls.

        ``layer`` is the model layer index ``L`` (``blocks.{L}.moe``); ``topk_mask`` the dense
        selection (``cache.topk_mask()[i]``, or ``topk_mask_from_indices``), ``scores`` the
        router's scores over all experts before top-k (``hook_router_scores``), ``mask`` the
        attention mask (True/1 = real token; None = no padding). Any leading token layout
        (``[batch pos]`` or ``[tokens]``) works as long as the three agree. Tensors may live
        on any device; only the per-expert sums come back to the CPU.
        """
        self._index(domain, layer)  # fail before computing anything
        if topk_mask.shape[-1:] != (self.n_experts,):
            raise InvalidInputError(
                f"topk_mask has shape {tuple(topk_mask.shape)} but this RoutingStats has "
                f"n_experts={self.n_experts}: the last axis must be the experts."
            )
        self.add(domain, layer, routing_sums(topk_mask, scores, mask))

    def accumulate_layers(
        self,
        domain: str,
        topk_mask: Bool[Tensor, "moe_layer *batch n_experts"],
        scores: Float[Tensor, "moe_layer *batch n_experts"],
        mask: Shaped[Tensor, "*batch"] | None = None,  # bool, or the 0/1 attention mask
    ) -> None:
        """Add one batch for every MoE layer at once, stacked in ``moe_layers`` order
        (as ``cache.topk_mask()`` stacks them)."""
        if topk_mask.shape[0] != len(self.moe_layers) or scores.shape[0] != len(self.moe_layers):
            raise InvalidInputError(
                f"topk_mask {tuple(topk_mask.shape)} and scores {tuple(scores.shape)} must be "
                f"stacked over the {len(self.moe_layers)} MoE layers {list(self.moe_layers)} "
                f"on axis 0."
            )
        for i, layer in enumerate(self.moe_layers):
            self.accumulate(domain, layer, topk_mask[i], scores[i], mask)

    # ------------------------------------------------------------------ metrics
    @property
    def sums(self) -> RoutingSums:
        """All aggregates as one :class:`RoutingSums` with leading ``[domain moe_layer]``."""
        return RoutingSums(self.n_tokens, self.counts, self.entropy_sums, self.score_sums)

    @property
    def activation_rate(self) -> Float[Tensor, "domain moe_layer expert"]:
        """Fraction of a domain's tokens routed to the expert (NaN for a domain with no tokens)."""
        return self.sums.activation_rate

    @property
    def entropy(self) -> Float[Tensor, "domain moe_layer expert"]:
        """Mean normalised router entropy over routed tokens (NaN where never routed)."""
        return self.sums.entropy

    @property
    def mean_score(self) -> Float[Tensor, "domain moe_layer expert"]:
        """Mean raw router score over all of a domain's tokens."""
        return self.sums.mean_score

    def cwas(self) -> Float[Tensor, "domain moe_layer expert"]:
        """``A * (1 - H)``, 0 where ``A == 0``."""
        return cwas(self.activation_rate, self.entropy)

    def domain_specificity(self) -> Float[Tensor, "moe_layer expert"]:
        """``1 - H(q_e)/log|domains|``, ``q_e(D) ∝ A_e(D)``; NaN if never active or 1 domain."""
        return domain_specificity(self.activation_rate, dim=0)

    def cwas_lift(self) -> Float[Tensor, "domain moe_layer expert"]:
        """``CWAS_e(D) - mean_{D' != D} CWAS_e(D')``.

        Domains without tokens (NaN CWAS) are left out of the mean; with no other domain to
        compare against the mean is taken as 0, so the lift is CWAS itself.
        """
        c = self.cwas()
        valid = ~c.isnan()
        c0 = torch.where(valid, c, 0.0)
        other_sum = c0.sum(0, keepdim=True) - c0  # [domain moe_layer expert]
        other_n = valid.sum(0, keepdim=True) - valid.long()
        mean_other = torch.where(other_n > 0, other_sum / other_n.clamp_min(1), 0.0)
        return c - mean_other

    # ------------------------------------------------------------------ frames
    def to_frame(self) -> "pd.DataFrame":
        """Tidy frame, one row per (domain, layer, expert), in that order, with every metric.

        Columns: domain, layer, expert, n_tokens, count, activation_rate, entropy, cwas, lift,
        mean_score, specificity (the last is per (layer, expert), repeated across domains).
        """
        n_d, n_l, n_e = self.counts.shape
        d_idx = torch.arange(n_d).repeat_interleave(n_l * n_e)
        l_idx = torch.arange(n_l).repeat_interleave(n_e).repeat(n_d)
        layers = torch.tensor(self.moe_layers)
        spec = self.domain_specificity().unsqueeze(0).expand(n_d, n_l, n_e)
        columns = {
            "domain": [self.domains[i] for i in d_idx.tolist()],
            "layer": layers[l_idx].numpy(),
            "expert": torch.arange(n_e).repeat(n_d * n_l).numpy(),
            "n_tokens": self.n_tokens.unsqueeze(-1).expand(n_d, n_l, n_e).reshape(-1).numpy(),
            "count": self.counts.reshape(-1).numpy(),
            "activation_rate": self.activation_rate.reshape(-1).numpy(),
            "entropy": self.entropy.reshape(-1).numpy(),
            "cwas": self.cwas().reshape(-1).numpy(),
            "lift": self.cwas_lift().reshape(-1).numpy(),
            "mean_score": self.mean_score.reshape(-1).numpy(),
            "specificity": spec.reshape(-1).numpy(),
        }
        import pandas as pd

        return pd.DataFrame(columns)

    def domain_experts(self, domain: str | None = None, top: int | None = 10) -> "pd.DataFrame":
        """Experts of ``domain`` (every domain if None) ranked by CWAS lift, highest first.

        Ties break by higher CWAS, then by layer and expert. ``top`` rows per domain (all if
        None). Columns: domain, layer, expert, cwas, lift, activation_rate, entropy.
        """
        frame = self.to_frame()
        if domain is not None:
            self._domain_index(domain)
            frame = frame[frame["domain"] == domain]
        frame = frame.assign(_d=frame["domain"].map(self.domains.index))
        frame = frame.sort_values(
            ["_d", "lift", "cwas", "layer", "expert"],
            ascending=[True, False, False, True, True],
            na_position="last",
            kind="stable",
        )
        if top is not None:
            frame = frame.groupby("_d", sort=False).head(top)
        cols = ["domain", "layer", "expert", "cwas", "lift", "activation_rate", "entropy"]
        return frame[cols].reset_index(drop=True)

    def general_experts(self, top: int | None = 10) -> "pd.DataFrame":
        """Experts active in *every* domain: ranked by their minimum activation rate over domains
        (highest first), ties by lower specificity (NaN last), then layer and expert.

        Columns: layer, expert, min_activation_rate, mean_activation_rate, specificity.
        """
        rate = self.activation_rate  # [domain moe_layer expert]
        n_l, n_e = rate.shape[1:]
        import pandas as pd

        frame = pd.DataFrame(
            {
                "layer": torch.tensor(self.moe_layers).repeat_interleave(n_e).numpy(),
                "expert": torch.arange(n_e).repeat(n_l).numpy(),
                "min_activation_rate": rate.amin(0).reshape(-1).numpy(),
                "mean_activation_rate": rate.mean(0).reshape(-1).numpy(),
                "specificity": self.domain_specificity().reshape(-1).numpy(),
            }
        )
        frame = frame.sort_values(
            ["min_activation_rate", "specificity", "layer", "expert"],
            ascending=[False, True, True, True],
            na_position="last",
            kind="stable",
        )
        return (frame if top is None else frame.head(top)).reset_index(drop=True)

    # ------------------------------------------------------------------ combine and persist
    def merge(self, other: "RoutingStats") -> "RoutingStats":
        """A new ``RoutingStats`` holding both shards: aggregates add up exactly.

        Domains are the union (this one's order first); layers, experts and top_k must match.
        """
        if not isinstance(other, RoutingStats):
            raise InvalidInputError(f"can only merge a RoutingStats, got {type(other).__name__}.")
        same_k = None in (self.top_k, other.top_k) or self.top_k == other.top_k
        if (self.moe_layers, self.n_experts) != (other.moe_layers, other.n_experts) or not same_k:
            raise InvalidInputError(
                f"cannot merge RoutingStats of different models: moe_layers/n_experts/top_k "
                f"{list(self.moe_layers)}/{self.n_experts}/{self.top_k} vs "
                f"{list(other.moe_layers)}/{other.n_experts}/{other.top_k}."
            )
        domains = self.domains + tuple(d for d in other.domains if d not in self.domains)
        top_k = self.top_k if self.top_k is not None else other.top_k
        out = RoutingStats(domains, self.moe_layers, self.n_experts, top_k)
        for src in (self, other):
            idx = torch.tensor([domains.index(d) for d in src.domains])
            for name in SUM_FIELDS:
                getattr(out, name).index_add_(0, idx, getattr(src, name))
        return out

    # -- Result: plot, save, load ------------------------------------------------------------------
    def _figure(self, view: str = "cwas", domain: str | None = None, metric: str = "cwas", annotate: int = 5):
        """``view="cwas"``: heatmaps of ``metric`` (cwas, lift, activation_rate, entropy) per domain
        (:func:`~moelens.analysis.plots.plot_cwas_heatmap`); ``view="general_vs_domain"``: the
        scatter of :func:`~moelens.analysis.plots.plot_general_vs_domain`."""
        from moelens.analysis.plots import plot_cwas_heatmap, plot_general_vs_domain

        if view == "general_vs_domain":
            return plot_general_vs_domain(self, annotate=annotate)
        if view != "cwas":
            raise InvalidInputError(f"view={view!r}: pass 'cwas' or 'general_vs_domain'.")
        return plot_cwas_heatmap(self, domain=domain, metric=metric)

    def _draw(self, ax, domain: str | None = None, metric: str = "cwas") -> None:
        """One heatmap (layer x expert) of ``metric`` for ``domain`` (default: the first domain)."""
        from moelens.analysis.plots import heatmap_values

        domain = self.domains[0] if domain is None else domain
        values = heatmap_values(self, metric)[self.domains.index(domain)].numpy() if domain in self.domains else None
        if values is None:
            raise InvalidInputError(f"unknown domain {domain!r}; stats has {list(self.domains)}.")
        image = ax.imshow(values, aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(self.moe_layers)), [str(x) for x in self.moe_layers])
        ax.set_xlabel("expert"), ax.set_ylabel("layer"), ax.set_title(f"{metric} — {domain}")
        ax.figure.colorbar(image, ax=ax, label=metric)

    def _state(self) -> tuple[dict[str, Tensor], dict]:
        meta = {"domains": list(self.domains), "moe_layers": list(self.moe_layers), "n_experts": self.n_experts, "top_k": self.top_k}
        return {n: getattr(self, n) for n in SUM_FIELDS}, meta

    @classmethod
    def _from_state(cls, tensors: dict[str, Tensor], meta: dict, path: str | Path = "the file") -> "RoutingStats":
        out = cls(meta["domains"], meta["moe_layers"], meta["n_experts"], meta["top_k"])
        for name in SUM_FIELDS:
            expected = getattr(out, name)
            got = tensors.get(name)
            if got is None or got.shape != expected.shape or got.dtype != expected.dtype:
                raise ResultFileError(
                    f"{sidecar_paths(path)[0]}: tensor {name!r} is "
                    f"{None if got is None else (tuple(got.shape), got.dtype)}, expected "
                    f"{(tuple(expected.shape), expected.dtype)} from {sidecar_paths(path)[1]}."
                )
            setattr(out, name, got)
        return out

    @classmethod
    def load(cls, path: str | Path) -> "RoutingStats":
        """Read what :meth:`save` wrote (pass either file's path, or the common stem)."""
        tensors, meta = load_sidecar(path, cls.FORMAT, cls.VERSION, "RoutingStats")
        return cls._from_state(tensors, meta, path)

    def _repr_html_(self) -> str:  # notebooks: summary table and heatmap
        from moelens.viz.notebook import routing_stats_html

        return routing_stats_html(self)

    def __repr__(self) -> str:
        tokens = {d: int(self.n_tokens[i].max()) for i, d in enumerate(self.domains)}
        return (
            f"RoutingStats(domains={list(self.domains)}, moe_layers={list(self.moe_layers)}, "
            f"n_experts={self.n_experts}, top_k={self.top_k}, n_tokens={tokens})"
        )
