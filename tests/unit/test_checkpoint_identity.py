"""A checkpoint folder shared by calls that differ in the model, the metric or one router weight is
never mixed: each of the three sweeps (routing stats, driver effects, mediation) either refuses (an
unfinished run) or recomputes (a finished one), and an interrupted run resumes to the same result."""

from __future__ import annotations

import pytest
import torch

from moelens import HookedMoE, collect_routing_stats, driver_effects, routing_mediation
from moelens.checkpoints import callable_identity, model_fingerprint
from moelens.errors import CheckpointError, MoelensError
from moelens.testing import tiny_model

from .test_checkpoints import interrupted

QUIET = {"progress": False}


def three_layers(seed: int = 0) -> HookedMoE:
    return HookedMoE.from_hf(tiny_model("mixtral", seed, num_hidden_layers=3))


def edited(seed: int = 0) -> HookedMoE:
    """The same model with one router weight of layer 2 multiplied by 1.02."""
    model = three_layers(seed)
    with torch.no_grad():
        model.layers[2].mlp.gate.weight[1, 3] *= 1.02
    return model


def ids(seed: int = 3, n: int = 4, pos: int = 5) -> torch.Tensor:
    return torch.randint(3, 97, (n, pos), generator=torch.Generator().manual_seed(seed))


def last_logit_sum(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1].float().sum(-1)


# one call per sweep: model, folder, metric (mediation only) -> a tensor of its result
SWEEPS = {
    "stats": lambda model, folder, metric=None: collect_routing_stats(
        model, {"a": ids(1), "b": ids(2)}, batch_size=2, checkpoint=folder, **QUIET).score_sums,
    "drivers": lambda model, folder, metric=None: driver_effects(
        model, ids(), batch_size=2, checkpoint=folder, **QUIET).effect,
    "mediation": lambda model, folder, metric=last_logit_sum: torch.tensor(routing_mediation(
        model, ids(5, 4), torch.cat([ids(5, 4)[:, :-1], ids(6, 4)[:, -1:]], 1), metric=metric, max_tokens=10,
        checkpoint=folder, **QUIET).total),
}


@pytest.mark.parametrize("sweep", list(SWEEPS))
@pytest.mark.parametrize("other", ["another model", "edited router"])
def test_another_model_is_refused_while_unfinished_and_recomputed_once_finished(tmp_path, monkeypatch, sweep, other):
    call = SWEEPS[sweep]
    model_a = three_layers(0)
    model_b = three_layers(1) if other == "another model" else edited(0)
    fresh_a, fresh_b = call(model_a, None), call(model_b, None)
    assert not torch.equal(fresh_a, fresh_b)  # the two models really differ on this sweep
    interrupted(lambda: call(model_a, tmp_path / "u"), monkeypatch)
    with pytest.raises(CheckpointError, match="another model or other weights") as caught:
        call(model_b, tmp_path / "u")
    assert ("routers" in str(caught.value)) and str(tmp_path / "u") in str(caught.value)
    # the interrupted run resumes with its own model, to the uninterrupted result
    assert torch.equal(call(model_a, tmp_path / "u"), fresh_a)
    # a finished run of model A: model B recomputes, never returns A's result
    assert torch.equal(call(model_a, tmp_path / "f"), fresh_a)
    assert torch.equal(call(model_b, tmp_path / "f"), fresh_b)
    assert torch.equal(call(model_b, tmp_path / "f"), fresh_b)  # and B's finished result now resumes


def test_a_2_percent_change_of_one_router_weight_changes_the_fingerprint():
    before, after = model_fingerprint(three_layers(0)), model_fingerprint(edited(0))
    assert before["routers"] != after["routers"] and before["weights"] == after["weights"]
    assert model_fingerprint(three_layers(0)) == before  # and it is deterministic


def test_lambda_metrics_are_refused_for_checkpointed_runs(tmp_path):
    model = three_layers(0)
    call = SWEEPS["mediation"]
    with pytest.raises(CheckpointError, match=r"metric_id=") as caught:
        call(model, tmp_path, metric=lambda logits: logits[:, -1, 3].float())
    assert "named top-level function" in str(caught.value) and isinstance(caught.value, MoelensError)
    with pytest.raises(CheckpointError, match="no stable identity"):
        call(model, tmp_path, metric=lambda logits: logits[:, -1, 4].float())
    scale = 2.0

    def closure(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1, 3].float() * scale

    with pytest.raises(CheckpointError, match="no stable identity"):
        call(model, tmp_path, metric=closure)
    assert not (tmp_path / "state.safetensors").exists()  # refused before any work
    # without a checkpoint a lambda is fine
    assert call(model, None, metric=lambda logits: logits[:, -1, 3].float()).shape == ()


def test_metric_id_names_a_lambda_and_two_ids_never_mix(tmp_path):
    model = three_layers(0)
    clean, corrupt = ids(5, 4), torch.cat([ids(5, 4)[:, :-1], ids(6, 4)[:, -1:]], 1)

    def run(metric, metric_id, folder=tmp_path):
        return routing_mediation(model, clean, corrupt, metric=metric, metric_id=metric_id, checkpoint=folder, **QUIET).total

    first, second = (lambda x: x[:, -1, 3].float()), (lambda x: x[:, -1, 4].float())
    a = run(first, "logit-3")
    b = run(second, "logit-4")  # the finished "logit-3" run is superseded, not returned
    assert a != b
    assert b == run(second, None, folder=None) and a == run(first, None, folder=None)


def test_callable_identity_of_named_functions_and_factories():
    assert callable_identity(last_logit_sum).startswith(f"{__name__}:last_logit_sum#")
    from moelens.analysis.mediation import logit_diff

    model = three_layers(0)
    assert callable_identity(logit_diff(model, 3, 4)) == "moelens.logit_diff(3, 4)"
    assert callable_identity(logit_diff(model, 3, 4)) != callable_identity(logit_diff(model, 4, 3))
    with pytest.raises(CheckpointError, match="metric_id="):
        callable_identity(lambda x: x)
    with pytest.raises(CheckpointError, match="non-empty str"):
        callable_identity(last_logit_sum, given="")
