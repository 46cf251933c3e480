"""Batching many perturbations into one trace, measured rather than assumed.

nnsight 0.8 slices each invoke's rows out of batched tensors by the batch axis, but an MoE router
sees flattened tokens ``[batch*pos n_experts]``: an edit written in one invoke lands on every row of
the batch. Batched per-row targets therefore select their rows themselves (``experts=`` a
LongTensor ``[batch]``), which is what NNsightMoE and the analyses do.
"""

from __future__ import annotations

import torch

from moelens.interventions import Ablate

from ..tolerance import float_tol
from .conftest import pair

LAYER = 1


def _route_without(router, output, expert):
    """The router's output re-routed with ``expert`` never selected (Ablate(route) by hand)."""
    logits, weights, _ = output
    edited = logits.clone()
    edited[:, expert] = float("-inf")
    routing = pair("mixtral")[1].spec.routing.route(edited, router._module)
    return (edited, routing.weights.to(weights.dtype), routing.index)


def test_per_invoke_router_edits_hit_every_row_of_the_batch():
    hooked, nns = pair("mixtral")
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    router = nns._envoys.routers[LAYER]
    rows_seen: list[int] = []
    with nns.nn_model.trace() as tracer:
        with tracer.invoke(ids[:1]):
            rows_seen.append(router.output[0].shape[0])
            router.output = _route_without(router, router.output, 0)
            first = nns.nn_model.output.logits.save()
        with tracer.invoke(ids[1:]):
            rows_seen.append(router.output[0].shape[0])
            router.output = _route_without(router, router.output, 3)
            second = nns.nn_model.output.logits.save()
    logits = torch.cat([first, second])
    # each invoke's edit saw both rows' tokens (2 x 4), not its own 4
    assert rows_seen == [8, 8]
    both = hooked.run_with_interventions(ids, [Ablate(LAYER, 0), Ablate(LAYER, 3)])
    own = torch.cat([hooked.run_with_interventions(ids[i : i + 1], Ablate(LAYER, e)) for i, e in ((0, 0), (1, 3))])
    assert torch.equal(logits, both)  # every row got both ablations, silently
    assert not torch.equal(logits, own)


def test_per_row_targets_give_the_rows_of_separate_runs():
    hooked, nns = pair("mixtral")
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]])
    experts = torch.tensor([0, 3, 1])
    batched = nns.run_with_interventions(ids, Ablate(LAYER, experts))
    separate = torch.cat(
        [hooked.run_with_interventions(ids[i : i + 1], Ablate(LAYER, int(e))) for i, e in enumerate(experts)]
    )
    assert torch.allclose(batched, separate, atol=float_tol(separate.dtype, separate), rtol=0)  # batch-size rounding only
    assert not torch.allclose(batched, hooked(ids), atol=1e-3)
