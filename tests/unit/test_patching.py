"""moelens.patching against a hand loop of run_with_hooks, and planted cases."""

from __future__ import annotations

import functools

import pytest
import torch
from matplotlib.figure import Figure

from moelens import HookedMoE
from moelens.errors import InvalidInputError
from moelens.patching import (
    PatchingResult,
    activation_patching,
    get_act_patch_attn_out,
    get_act_patch_mlp_out,
    get_act_patch_resid_pre,
    routing_patching,
)
from moelens.testing import tiny_model

CLEAN = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
CORRUPTED = torch.tensor([[5, 6, 30, 8], [9, 10, 40, 12]])  # differ at position 2 only


@functools.lru_cache(maxsize=None)
def _model(family: str) -> HookedMoE:
    return HookedMoE.from_hf(tiny_model(family, 2))


def metric(logits):
    return logits[:, -1, 3] - logits[:, -1, 4]  # [batch]; activation patching averages it


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3"])
@pytest.mark.parametrize("activation", ["resid_pre", "attn_out", "mlp_out"])
def test_equals_a_hand_loop_of_run_with_hooks(family, activation):
    model = _model(family)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(CLEAN)
    result = activation_patching(model, CORRUPTED, clean_cache, metric, activation)
    tl_name = {"resid_pre": get_act_patch_resid_pre, "attn_out": get_act_patch_attn_out, "mlp_out": get_act_patch_mlp_out}
    assert torch.equal(tl_name[activation](model, CORRUPTED, clean_cache, metric), result.values)
    assert result.values.shape == (model.cfg.n_layers, 4)
    with torch.no_grad():
        for layer in range(model.cfg.n_layers):
            name = f"blocks.{layer}.hook_{activation}"
            for position in range(4):
                def patch(x, hook, layer=layer, position=position, name=name):
                    x = x.clone()
                    x[:, position] = clean_cache[name][:, position]
                    return x

                expected = metric(model.run_with_hooks(CORRUPTED, [(name, patch)])).double().mean()
                assert float(result.values[layer, position]) == float(expected), (layer, position)


def test_planted_resid_pre_at_layer_0_restores_the_clean_run_where_the_inputs_differ():
    model = _model("qwen2_moe")
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(CLEAN)
        corrupted_value = float(metric(model(CORRUPTED)).double().mean())
    clean_value = float(metric(clean_logits).double().mean())
    result = activation_patching(model, CORRUPTED, clean_cache, metric, "resid_pre")
    assert float(result.values[0, 2]) == clean_value  # the only differing embedding patched: the clean forward
    assert result.values[0, [0, 1, 3]].eq(corrupted_value).all()  # identical values patched: nothing changes
    assert result.settings["corrupted_metric"] == corrupted_value
    assert result.settings["clean_metric"] == pytest.approx(clean_value, abs=1e-6)
    assert float(result.normalized()[0, 2]) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("activation", ["resid_pre", "resid_mid", "mlp_out"])
def test_patching_the_clean_run_into_itself_gives_the_clean_metric_everywhere(activation):
    model = _model("mixtral")
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(CLEAN)
    result = activation_patching(model, CLEAN, clean_cache, metric, activation)
    assert result.values.eq(float(metric(clean_logits).double().mean())).all()


def test_routing_patching_is_mediation_swapped_and_planted_self_patch():
    from moelens import routing_mediation

    model = _model("mixtral")
    result = routing_patching(model, CLEAN, CORRUPTED, metric)
    med = routing_mediation(model, CORRUPTED, CLEAN, metric, positions=False, progress=False)
    assert result.values.shape == (len(model.cfg.moe_layers), model.cfg.n_experts) and result.column == "expert"
    assert torch.equal(result.values, med.indirect + result.settings["corrupted_metric"])
    with torch.no_grad():
        per_row = [float(metric(model(row[None]))) for row in CLEAN]
    same = routing_patching(model, CLEAN, CLEAN, metric)
    assert same.values.eq(sum(per_row) / 2).all()


def test_result_round_trip_frame_plot(tmp_path):
    model = _model("mixtral")
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(CLEAN)
    result = activation_patching(model, CORRUPTED, clean_cache, metric, "attn_out", layers=[1])
    assert result.layers == (1,)
    back = PatchingResult.load(result.save(tmp_path / "patch"))
    assert torch.equal(back.values, result.values) and back.settings == result.settings
    assert list(result.to_frame().columns) == ["layer", "pos", "value"]
    assert isinstance(result.plot(), Figure) and "PatchingResult(attn_out" in repr(result) and "<table" in result._repr_html_()
    with pytest.raises(InvalidInputError, match="per-layer residual-stream"):
        activation_patching(model, CORRUPTED, clean_cache, metric, "router_logits")
    with pytest.raises(InvalidInputError, match="batch size and length"):
        activation_patching(model, CORRUPTED[:, :3], clean_cache, metric)
