"""Which positions' routing in layer ``L`` drives the output: the driver sweep with the push applied
at one group of positions at a time.

For each group ``G`` (default: each absolute position ``p``, one group per position of the longest
input), ``effect[G, l, e] = E_x KL(P || Q_{l,e,G})`` where ``Q_{l,e,G}`` pushes expert ``e``'s router
logit at the tokens of ``G`` only, and the KL is read where ``positions=`` says (default: the last
token). The mean runs over the inputs that have a token in ``G`` (a short input has no position 40).
KL is not additive over positions: the groups' effects need not sum to the all-position effect;
``share`` compares groups with each other, not with that total.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from moelens.errors import InvalidInputError
from moelens.results import Result

from .options import SweepInputs
from .positions import describe_push, parse_perturb_positions, push_mask
from .sweep import driver_effects

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

    from moelens.model import HookedMoE

__all__ = ["PositionEffects", "driver_effects_by_position"]

@dataclass(repr=False, eq=False)
class PositionEffects(Result):
    """Driver effects per group of pushed positions: ``effect [group moe_layer expert]`` (float64),
    ``n_inputs [group]`` (inputs with a token in the group), ``labels`` of the groups.

    >>> e = PositionEffects(torch.tensor([[[0.3, 0.1]], [[0.1, 0.0]]]), ["0", "1"], (0,), torch.tensor([2, 2]))
    >>> e.layer_profile(0)["share"].round(2).tolist()
    [0.8, 0.2]
    """

    effect: Tensor
    labels: list[str]
    moe_layers: tuple[int, ...]
    n_inputs: Tensor
    settings: dict[str, Any] = field(default_factory=dict)

    FORMAT: ClassVar[str] = "moelens.PositionEffects"
    VERSION: ClassVar[int] = 1
    FIGSIZE: ClassVar[tuple[float, float]] = (7.0, 3.5)

    def __post_init__(self) -> None:
        self.effect = self.effect.detach().cpu().double()
        self.moe_layers = tuple(int(x) for x in self.moe_layers)
        if self.effect.ndim != 3 or self.effect.shape[:2] != (len(self.labels), len(self.moe_layers)):
            raise InvalidInputError(
                f"effect has shape {tuple(self.effect.shape)}; expected ({len(self.labels)}, {len(self.moe_layers)}, n_experts)."
            )

    def totals(self) -> Tensor:
        """Summed effect over experts ``[group moe_layer]``."""
        return self.effect.sum(-1)

    def layer_profile(self, layer: int) -> "pd.DataFrame":
        """For model layer ``layer``: per group ``group, total, share`` (of the groups' summed
        total), ``top_expert`` and ``n_inputs``."""
        import pandas as pd

        if layer not in self.moe_layers:
            raise InvalidInputError(f"layer={layer!r} is not among the swept MoE layers {list(self.moe_layers)}.")
        li = self.moe_layers.index(layer)
        total = self.effect[:, li].sum(-1)
        grand = float(total.sum())
        return pd.DataFrame({
            "group": self.labels, "total": total.numpy(),
            "share": (total / grand).numpy() if grand > 0 else torch.zeros(len(total)).numpy(),
            "top_expert": self.effect[:, li].argmax(-1).numpy(), "n_inputs": self.n_inputs.numpy(),
        })

    def to_frame(self) -> "pd.DataFrame":
        """One row per (group, layer, expert): ``group, layer, expert, effect``."""
        import pandas as pd

        g, li, e = torch.meshgrid(*(torch.arange(n) for n in self.effect.shape), indexing="ij")
        return pd.DataFrame({
            "group": [self.labels[i] for i in g.flatten().tolist()],
            "layer": [self.moe_layers[i] for i in li.flatten().tolist()],
            "expert": e.flatten().numpy(), "effect": self.effect.flatten().numpy(),
        })

    def _draw(self, ax: "Axes", **options: Any) -> None:
        """Summed effect per group, one line per MoE layer."""
        for li, layer in enumerate(self.moe_layers):
            ax.plot(range(len(self.labels)), self.totals()[:, li].numpy(), marker="o", label=f"layer {layer}")
        ax.set_xticks(range(len(self.labels)), self.labels, rotation=90 if len(self.labels) > 12 else 0)
        ax.set_xlabel("pushed positions")
        ax.set_ylabel("summed driver effect (nats)")
        ax.legend(fontsize=7)

    def _state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return ({"effect": self.effect, "n_inputs": self.n_inputs.long()},
                {"labels": self.labels, "moe_layers": list(self.moe_layers), "settings": self.settings})

    @classmethod
    def _from_state(cls, tensors: dict[str, Tensor], meta: dict[str, Any]) -> "PositionEffects":
        return cls(tensors["effect"], list(meta["labels"]), tuple(meta["moe_layers"]), tensors["n_inputs"], meta["settings"])

    def _html_table(self) -> "pd.DataFrame":
        """Each group's share of the summed effect, one column per MoE layer."""
        from moelens.lazy import pandas as pd

        frames = [self.layer_profile(layer).assign(layer=layer) for layer in self.moe_layers]
        return pd.concat(frames).pivot(index="group", columns="layer", values="share").reset_index()

    def __repr__(self) -> str:
        return (f"PositionEffects({len(self.labels)} position groups x MoE layers {list(self.moe_layers)}, "
                f"{self.effect.shape[-1]} experts)")


def driver_effects_by_position(
    model: "HookedMoE",
    texts: str | list[str] | Tensor,
    *,
    groups: Mapping[str, Any] | None = None,
    attention_mask: Tensor | None = None,
    max_length: int | None = 256,
    **kwargs: Any,
) -> PositionEffects:
    """The driver sweep once per group of pushed positions (module docstring).

    ``groups``: ``{label: perturb_positions selector}`` (see :func:`driver_effects`), or None for
    one group per absolute position. Other keyword arguments go to :func:`driver_effects`
    (``method``, ``layers``, ``positions``, ``perturbation``...). Cost: one sweep per group.

    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
    >>> ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    >>> by = driver_effects_by_position(model, ids, layers=0, progress=False)
    >>> by.effect.shape, by.labels  # [group moe_layer expert]
    (torch.Size([3, 1, 4]), ['0', '1', '2'])
    """
    if "perturb_positions" in kwargs or "per_input" in kwargs:
        raise InvalidInputError("driver_effects_by_position sets perturb_positions and per_input itself; pass groups= instead.")
    data = SweepInputs(model, texts, attention_mask, max_length)
    lengths = torch.cat([data.batch(i, min(i + 64, data.n))[1].sum(-1).cpu() for i in range(0, data.n, 64)])
    if groups is None:
        groups = {str(p): [[p] if p < int(n) else [] for n in lengths] for p in range(int(lengths.max()))}
    elif not isinstance(groups, Mapping) or not groups:
        raise InvalidInputError(f"groups={groups!r}: pass None (one group per position) or a non-empty {{label: selector}} dict.")
    effects, counts, settings = [], [], {}
    for selector in groups.values():
        result = driver_effects(
            model, texts, attention_mask=attention_mask, max_length=max_length, perturb_positions=selector,
            per_input=True, **kwargs,
        )
        has = _has_pushed(model, data, selector)
        counts.append(int(has.sum()))
        per = result.per_input[has]
        effects.append(per.mean(0) if len(per) else torch.zeros_like(result.effect))
        settings, layers = {k: v for k, v in result.settings.items() if k != "perturb_positions"}, result.moe_layers
    settings["groups"] = {str(k): describe_push(parse_perturb_positions(v, data.n)) for k, v in groups.items()}
    return PositionEffects(torch.stack(effects), [str(k) for k in groups], layers, torch.tensor(counts), settings)


def _has_pushed(model: "HookedMoE", data: SweepInputs, selector: Any) -> Tensor:
    """Bool ``[input]``: inputs with at least one pushed token under ``selector``."""
    parsed = parse_perturb_positions(selector, data.n)
    out = []
    for start in range(0, data.n, 64):
        ids, mask = data.batch(start, min(start + 64, data.n))
        where = push_mask(model, parsed, ids, mask, start)
        out.append((mask.bool() if where is None else where).any(-1).cpu())
    return torch.cat(out)
