"""Driver experts: how much the next-token distribution moves when one expert's routing is pushed.

For MoE layer ``l`` and expert ``e`` (a reconstruction of arXiv 2601.10159, DESIGN.md section 4)::

    CE(l, e) = E_x KL( P(. | x) || Q_{l,e}(. | x) )

``P`` is the model's next-token distribution, ``Q_{l,e}`` the same under
``Perturb(l, e, magnitude, sign)``: ``sign * magnitude`` added to the expert's router logit **at
every position** of the input (``perturb_positions=`` restricts it: :mod:`.positions`; by group of
positions: :mod:`.by_position`), then re-routed by the family's own rule. The KL is read at the last
non-padding token (``positions="last"``, the answer position) or averaged over the non-padding
positions of each input (``positions="all"``); inputs are then averaged with equal weight.

Three methods, one result type (:class:`DriverEffects`), one folder: ``result`` (the type),
``sweep`` (arguments, batches, checkpoints), ``options`` (the frozen :class:`SweepOptions` the
kernels take), ``routing`` (perturbed routing from the clean router logits), ``exact`` and
``first_order`` (the per-batch kernels):

- ``"exact"``: the KL itself, without the naive ``layers x experts`` full forwards. One clean
  forward per batch keeps the residual stream entering every MoE layer; a push at layer ``l`` then
  runs layers ``l..end`` only (``start_at_layer``), many (input, expert) pairs stacked along the
  batch axis in one forward (``Perturb``'s ``[batch]`` expert selector), short inputs together and
  trailing padding dropped. The clean top-k is reused: the perturbed routing of layer ``l`` comes
  from the clean router logits and the family's rule for all experts at once, and a pair whose
  routing does not move at any real token (up to float32 rounding) has effect 0 and never runs.
  With ``positions="last"`` only the last token goes through the final norm and unembedding
  (checked against the clean logits on every batch, else full logits are used). Equal to the naive
  loop up to float rounding.
- ``"first_order"``: exact change of the MoE block output (top-k swaps included), propagated
  linearly to the logits: one clean forward and ``n_targets`` backward passes per batch, then
  per layer only routing arithmetic and block runs on the tokens whose top-k set changes (see
  :mod:`moelens.analysis.drivers.first_order`).
- ``"router_gradient"``: the cruder gradient with respect to the router logits only; cheapest,
  blind to experts entering or leaving the top-k.

"Driver experts concentrate in the middle layers": :meth:`DriverEffects.layer_totals`,
:meth:`DriverEffects.middle_share` and :meth:`DriverEffects.plot_layer_totals`.
:func:`moelens.analysis.agreement.compare_effects` checks an estimate against the exact sweep.

>>> import torch
>>> from moelens import HookedMoE
>>> from moelens.testing import tiny_model
>>> model = HookedMoE.from_hf(tiny_model("mixtral"))
>>> ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
>>> effects = driver_effects(model, ids, progress=False)
>>> effects.effect.shape  # [moe_layer expert]
torch.Size([2, 4])
>>> list(effects.top(3).columns)
['layer', 'expert', 'effect', 'rank']
"""

from .by_position import PositionEffects, driver_effects_by_position
from .options import SweepOptions
from .result import DriverEffects
from .sweep import driver_effects

__all__ = ["DriverEffects", "PositionEffects", "SweepOptions", "driver_effects", "driver_effects_by_position"]
