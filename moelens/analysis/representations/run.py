"""Expert representations: the mean output of each expert over the tokens routed to it.

For every (MoE layer, expert), :func:`expert_representations` streams the texts and averages the
expert's *unweighted* output (``blocks.{L}.moe.hook_expert_out`` of the slot where it was selected)
over the non-padding tokens whose top-k contains it; it also counts those tokens per domain. The
result embeds the experts with t-SNE and clusters them with K-means (scikit-learn), the paper's
expert-clustering view: do experts cluster by layer, or by the domain they serve?

Families whose experts run as one dense block (Llama-4: no ``hook_expert_out``) get the same
quantity from :func:`moelens.analysis._routing_patch.expert_contribution` at weight 1.

>>> from moelens import HookedMoE
>>> from moelens.testing import tiny_model
>>> model = HookedMoE.from_hf(tiny_model("mixtral"))
>>> reps = expert_representations(model, {"a": torch.randint(3, 97, (2, 6)), "b": torch.randint(3, 97, (2, 6))}, progress=False)
>>> reps.means.shape, reps.counts.shape  # [moe_layer expert d_model], [domain moe_layer expert]
(torch.Size([2, 4, 32]), torch.Size([2, 2, 4]))
>>> int(reps.counts.sum())  # 2 domains x 12 tokens x 2 layers x top-2
96
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from moelens.errors import InvalidInputError
from moelens.lazy import pandas as pd
from moelens.names import moe_name
from moelens.results import Result, new_figure

from .._routing_patch import expert_contribution
from ..drivers.options import SweepInputs, positive_int

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from moelens.model import HookedMoE

__all__ = ["ExpertRepresentations", "expert_representations"]



class ExpertRepresentations(Result):
    """Mean unweighted output ``means [moe_layer expert d_model]`` (float64; NaN for an expert no
    token was routed to) and routed-token ``counts [domain moe_layer expert]``.

    >>> reps = ExpertRepresentations(torch.randn(2, 3, 4), torch.ones(1, 2, 3), ["d"], (0, 1))
    >>> reps.to_frame(n_clusters=2).columns.tolist()
    ['layer', 'expert', 'count', 'dominant_domain', 'cluster', 'tsne_x', 'tsne_y']
    """

    FORMAT, VERSION = "moelens.ExpertRepresentations", 1

    def __init__(self, means: Tensor, counts: Tensor, domains, moe_layers, settings=None):
        self.means = means.detach().cpu().double()
        self.counts = counts.detach().cpu().double()
        self.domains = list(domains)
        self.moe_layers = tuple(int(x) for x in moe_layers)
        self.settings = dict(settings or {})

    @property
    def used(self) -> Tensor:
        """``[moe_layer expert]`` bool: some token was routed to the expert."""
        return self.counts.sum(0) > 0

    def _points(self) -> np.ndarray:
        return self.means[self.used].numpy()  # [n_used d_model], layer-major order

    def tsne(self, perplexity: float | None = None, seed: int = 0) -> np.ndarray:
        """2-D t-SNE of the used experts' mean outputs ``[moe_layer*expert 2]`` (NaN rows for unused
        experts); ``perplexity`` defaults to ``min(30, (n_used - 1) / 3)``."""
        from sklearn.manifold import TSNE

        points = self._points()
        if len(points) < 3:
            raise InvalidInputError(f"t-SNE needs at least 3 experts with routed tokens; {len(points)} have any.")
        perplexity = perplexity or max(1.0, min(30.0, (len(points) - 1) / 3))
        embedded = TSNE(2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(points)
        out = np.full((self.used.numel(), 2), np.nan)
        out[self.used.reshape(-1).numpy()] = embedded
        return out

    def kmeans(self, n_clusters: int = 4, seed: int = 0) -> np.ndarray:
        """K-means cluster of each expert ``[moe_layer*expert]`` (-1 for unused experts)."""
        from sklearn.cluster import KMeans

        points = self._points()
        n_clusters = positive_int("n_clusters", n_clusters)
        if len(points) < n_clusters:
            raise InvalidInputError(f"n_clusters={n_clusters} exceeds the {len(points)} experts with routed tokens.")
        labels = KMeans(n_clusters, n_init=10, random_state=seed).fit_predict(points)
        out = np.full(self.used.numel(), -1)
        out[self.used.reshape(-1).numpy()] = labels
        return out

    def to_frame(self, n_clusters: int = 4, seed: int = 0) -> pd.DataFrame:
        """``layer, expert, count, dominant_domain`` (most routed tokens), ``cluster`` (K-means),
        ``tsne_x, tsne_y``; one row per (layer, expert)."""
        n_l, n_e = self.used.shape
        xy = self.tsne(seed=seed)
        dominant = np.array(self.domains, dtype=object)[self.counts.argmax(0).reshape(-1).numpy()]
        dominant[~self.used.reshape(-1).numpy()] = None
        return pd.DataFrame({
            "layer": np.repeat(np.array(self.moe_layers), n_e), "expert": np.tile(np.arange(n_e), n_l),
            "count": self.counts.sum(0).reshape(-1).numpy().astype(np.int64), "dominant_domain": dominant,
            "cluster": self.kmeans(min(n_clusters, int(self.used.sum())), seed), "tsne_x": xy[:, 0], "tsne_y": xy[:, 1],
        })

    def _figure(self, n_clusters: int = 4, seed: int = 0) -> Figure:
        """t-SNE of the experts, coloured by layer (left) and by dominant domain (right), each point
        labelled with its K-means cluster."""
        frame = self.to_frame(n_clusters, seed).dropna(subset=["tsne_x"])
        fig = new_figure((10.0, 4.2))
        left, right = fig.subplots(1, 2)
        self._draw(left, frame=frame)
        for i, domain in enumerate(self.domains):
            part = frame[frame.dominant_domain == domain]
            right.scatter(part.tsne_x, part.tsne_y, s=30, color=f"C{i}", label=domain)
        right.legend(fontsize=8, frameon=False, title="dominant domain")
        _label_clusters(right, frame)
        right.set_title("by the domain that routes most tokens to the expert", fontsize=9)
        return fig

    def _draw(self, ax, n_clusters: int = 4, seed: int = 0, frame=None) -> None:
        """The t-SNE of the experts coloured by layer, labelled with the K-means cluster."""
        frame = self.to_frame(n_clusters, seed).dropna(subset=["tsne_x"]) if frame is None else frame
        points = ax.scatter(frame.tsne_x, frame.tsne_y, c=frame.layer, cmap="viridis", s=30)
        ax.figure.colorbar(points, ax=ax, label="layer")
        _label_clusters(ax, frame)
        ax.set_title("expert mean outputs (t-SNE), by layer; labels: K-means cluster", fontsize=9)

    def _state(self) -> tuple[dict[str, Tensor], dict]:
        meta = {"domains": self.domains, "moe_layers": list(self.moe_layers), "settings": self.settings}
        return {"means": self.means, "counts": self.counts}, meta

    @classmethod
    def _from_state(cls, tensors: dict[str, Tensor], meta: dict) -> ExpertRepresentations:
        return cls(tensors["means"], tensors["counts"], meta["domains"], meta["moe_layers"], meta.get("settings", {}))

    def __repr__(self) -> str:
        n_l, n_e, d = self.means.shape
        return (f"ExpertRepresentations({n_l} MoE layers x {n_e} experts, d_model={d}, domains={self.domains}, "
                f"{int(self.used.sum())} experts used)")


def _label_clusters(ax, frame) -> None:
    for row in frame.itertuples():
        ax.annotate(str(row.cluster), (row.tsne_x, row.tsne_y), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.set_xticks([]), ax.set_yticks([])


def expert_representations(
    model: HookedMoE,
    texts: dict[str, Any] | list[str] | Tensor,
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> ExpertRepresentations:
    """Mean unweighted output of every (MoE layer, expert) over the tokens routed to it, streamed
    over ``texts`` (``{domain: texts or token ids}``, or one list/tensor for a single domain "all").

    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("llama4_text"))  # dense experts: no hook_expert_out
    >>> expert_representations(model, torch.randint(3, 97, (2, 5)), progress=False).means.shape
    torch.Size([2, 4, 32])
    """
    data = texts if isinstance(texts, dict) else {"all": texts}
    if not data:
        raise InvalidInputError("texts is an empty dict; pass {domain: texts}.")
    batch_size = positive_int("batch_size", batch_size)
    layers, n_e, d = list(model.cfg.moe_layers), model.cfg.n_experts, model.cfg.d_model
    sums = torch.zeros(len(layers), n_e, d, dtype=torch.float64)
    counts = torch.zeros(len(data), len(layers), n_e, dtype=torch.float64)
    fused = moe_name(layers[0], "hook_expert_out") in model.hook_dict
    suffixes = ("hook_topk_indices", "hook_expert_out") if fused else ("hook_topk_indices", "hook_in")
    names = [moe_name(layer, s) for layer in layers for s in suffixes]
    from tqdm.auto import tqdm

    inputs = {domain: SweepInputs(model, value, None) for domain, value in data.items()}
    bar = tqdm(total=sum(x.n for x in inputs.values()), disable=not progress, desc="expert representations", unit="text")
    try:
        for di, source in enumerate(inputs.values()):
            for start in range(0, source.n, batch_size):
                ids, mask = source.batch(start, min(start + batch_size, source.n))
                with torch.no_grad():
                    _, cache = model.run_with_cache(ids, names_filter=names, attention_mask=mask)
                real = mask.bool()
                for li, layer in enumerate(layers):
                    index = cache[moe_name(layer, "hook_topk_indices")][real]  # [tokens k]
                    if fused:
                        out = cache[moe_name(layer, "hook_expert_out")][real]  # [tokens k d_model]
                    else:
                        tokens = cache[moe_name(layer, "hook_in")][real]
                        k = index.shape[1]
                        flat = expert_contribution(model, layer, tokens.repeat_interleave(k, 0), index.reshape(-1),
                                                   torch.ones(index.numel(), device=index.device))
                        out = flat.view(len(tokens), k, d)  # [tokens*k d] -> [tokens k d]
                    sums[li].index_add_(0, index.reshape(-1).cpu(), out.reshape(-1, d).double().cpu())
                    counts[di, li].index_add_(0, index.reshape(-1).cpu(), torch.ones(index.numel(), dtype=torch.float64))
                bar.update(ids.shape[0])
    finally:
        bar.close()
    total = counts.sum(0)[..., None]
    means = torch.where(total > 0, sums / total.clamp_min(1), float("nan"))
    return ExpertRepresentations(means, counts, list(data), layers, {"n_texts": {k: v.n for k, v in inputs.items()}})
