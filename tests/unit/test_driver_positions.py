"""perturb_positions= (where the sweep pushes) and the by-position breakdown: the exact sweep
against a naive loop with Perturb(positions=...), first order against exact, a planted model where
only early positions' routing can matter."""

import functools

import pytest
import torch

from moelens import HookedMoE, InvalidInputError, Perturb
from moelens.analysis.drivers import PositionEffects, driver_effects, driver_effects_by_position
from moelens.metrics import kl_divergence
from moelens.testing import tiny_model

QUIET = {"progress": False}
NULL_TOKEN = 50  # planted: a token whose embedding is zero


@functools.cache
def sharp() -> HookedMoE:
    return HookedMoE.from_hf(tiny_model("mixtral", 0, initializer_range=0.2))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 97, (3, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    mask[2, 5:] = 0
    return ids, mask


def naive(model, ids, mask, rows_positions, magnitude=1.0) -> torch.Tensor:
    """One full forward per (input, layer, expert) with Perturb(positions=...) on that input alone."""
    layers, n = model.cfg.moe_layers, model.cfg.n_experts
    out = torch.zeros(ids.shape[0], len(layers), n, dtype=torch.float64)
    with torch.no_grad():
        for b in range(ids.shape[0]):
            width = int(mask[b].sum())  # right padding: the real tokens come first
            row = ids[b : b + 1, :width]
            clean = model(row)[0, -1]
            for i, layer in enumerate(layers):
                for e in range(n):
                    push = Perturb(layer, e, magnitude=magnitude, positions=rows_positions[b])
                    new = model.run_with_interventions(row, [push])[0, -1]
                    out[b, i, e] = float(kl_divergence(clean, new))
    return out


@pytest.mark.parametrize(
    ("selector", "per_row"),
    [("last", [-1] * 3), (slice(0, 2), [slice(0, 2)] * 3), (1, [1] * 3), ([[0], [2, 3], [4]], [[0], [2, 3], [4]])],
)
def test_exact_equals_naive_loop_with_perturb_positions(selector, per_row):
    model = sharp()
    ids, mask = batch()
    got = driver_effects(model, ids, attention_mask=mask, perturb_positions=selector, per_input=True,
                         perturbation=(4.0, -1), **QUIET)
    want = naive(model, ids, mask, per_row, magnitude=4.0)
    assert float(want.max()) > 1e-5  # something moves (fp32 KL rounding is ~1e-7): the comparison can fail
    torch.testing.assert_close(got.per_input, want, rtol=1e-4, atol=1e-6)
    assert got.settings["perturb_positions"] is not None


def test_all_is_todays_sweep_and_pushing_less_changes_the_result():
    model = sharp()
    ids, mask = batch()
    default = driver_effects(model, ids, attention_mask=mask, per_input=True, **QUIET)
    explicit = driver_effects(model, ids, attention_mask=mask, perturb_positions="all", per_input=True, **QUIET)
    assert torch.equal(default.per_input, explicit.per_input)
    last = driver_effects(model, ids, attention_mask=mask, perturb_positions="last", per_input=True, **QUIET)
    assert not torch.allclose(last.per_input, default.per_input)


def test_non_special_skips_the_bos_token():
    model = HookedMoE.from_pretrained("moelens/mixtral-tiny")
    bos = model.tokenizer.bos_token_id
    ids = torch.tensor([[bos, 5, 6, 7], [bos, 8, 9, 10]])
    got = driver_effects(model, ids, perturb_positions="non_special", per_input=True, **QUIET)
    want = driver_effects(model, ids, perturb_positions=slice(1, None), per_input=True, **QUIET)
    assert float(want.effect.max()) > 1e-6
    torch.testing.assert_close(got.per_input, want.per_input, rtol=1e-5, atol=1e-8)
    with pytest.raises(InvalidInputError, match="needs the model's tokenizer"):
        driver_effects(sharp(), ids, perturb_positions="non_special", **QUIET)


@pytest.mark.parametrize("selector", ["last", [[0, 1], [2], [0, 3, 4]]])
def test_first_order_with_perturb_positions_tracks_exact(selector):
    model = sharp()
    ids, mask = batch()
    kwargs = {"attention_mask": mask, "perturbation": (0.05, -1), "perturb_positions": selector, **QUIET}
    exact = driver_effects(model, ids, **kwargs)
    approx = driver_effects(model, ids, method="first_order", n_targets=model.cfg.d_vocab, **kwargs)
    big = exact.effect > 0.05 * exact.effect.max()
    ratio = approx.effect[big] / exact.effect[big]
    assert float((ratio - 1).abs().median()) < 0.05, ratio  # only the downstream linearisation differs
    nothing = driver_effects(model, ids, method="first_order", n_targets=8, attention_mask=mask,
                             perturb_positions=[[], [], []], **QUIET)
    assert float(nothing.effect.abs().max()) == 0.0
    router = driver_effects(model, ids, method="router_gradient", n_targets=8, attention_mask=mask,
                            perturb_positions=[[], [], []], **QUIET)
    assert float(router.effect.abs().max()) == 0.0


def test_planted_only_early_positions_drive_layer_0():
    """Planted: tokens after position 2 have a zero embedding; with layer 0's attention off their MoE input is
    0 and every expert outputs 0 there, so their layer-0 routing cannot matter; the early tokens'
    routing reaches the last position through layer 1's attention."""
    model = HookedMoE.from_hf(tiny_model("mixtral", 0, initializer_range=0.2))  # KLs well above rounding
    with torch.no_grad():
        model.hf_model.get_input_embeddings().weight[NULL_TOKEN] = 0.0
        model.layers[0].self_attn.o_proj.weight.zero_()
    ids = torch.tensor([[5, 6, 7, NULL_TOKEN, NULL_TOKEN, NULL_TOKEN], [8, 9, 10, NULL_TOKEN, NULL_TOKEN, NULL_TOKEN]])
    by = driver_effects_by_position(model, ids, layers=0, perturbation=(4.0, -1), **QUIET)
    assert isinstance(by, PositionEffects) and by.labels == [str(p) for p in range(6)]
    totals = by.totals()[:, 0]
    assert float(totals[:3].min()) > 1e-3  # every early position drives the output
    # The late ones: fp32 rounding only (the rows run from layer 0 in another batch layout than the
    # clean forward: a KL of ~1e-7 between two roundings of the same logits, 4 experts summed).
    assert float(totals[3:].max()) < 1e-6
    profile = by.layer_profile(0)
    assert float(profile["share"][:3].sum()) > 0.999
    groups = driver_effects_by_position(model, ids, layers=0, perturbation=(4.0, -1),
                                        groups={"early": slice(0, 3), "late": slice(3, None)}, **QUIET)
    assert float(groups.totals()[1, 0]) < 1e-6 < 1e-3 < float(groups.totals()[0, 0])


def test_by_position_counts_only_inputs_that_have_the_position(tmp_path):
    model = sharp()
    ids, mask = batch()  # lengths 6, 4, 5
    by = driver_effects_by_position(model, ids, attention_mask=mask, **QUIET)
    assert by.n_inputs.tolist() == [3, 3, 3, 3, 2, 1]
    alone = driver_effects(model, ids[:1], perturb_positions=5, **QUIET)
    assert float(alone.effect.max()) > 1e-4
    # another batch layout (one row instead of three): the same KLs up to fp32 rounding (~1e-7)
    torch.testing.assert_close(by.effect[5], alone.effect, rtol=1e-4, atol=1e-6)
    back = PositionEffects.load(by.save(tmp_path / "by.safetensors"))
    assert torch.equal(back.effect, by.effect) and back.labels == by.labels
    assert set(by.to_frame().columns) == {"group", "layer", "expert", "effect"}
    by.plot()


@pytest.mark.parametrize("bad", ["first", [], [[0]], [[-1], [0], [0]], 2.5])
def test_bad_perturb_positions_are_refused(bad):
    ids, mask = batch()
    with pytest.raises(InvalidInputError, match="perturb_positions"):
        driver_effects(sharp(), ids, attention_mask=mask, perturb_positions=bad, **QUIET)


def test_a_perturb_with_positions_points_to_perturb_positions():
    with pytest.raises(InvalidInputError, match="perturb_positions=-1"):
        driver_effects(sharp(), torch.tensor([[5, 6]]), perturbation=Perturb("all", "all", positions=-1), **QUIET)


def test_first_order_carries_its_calibration_against_exact():
    model = sharp()
    ids, mask = batch()
    approx = driver_effects(model, ids, attention_mask=mask, method="first_order", n_targets=8, calibrate=2, per_input=True, **QUIET)
    cal = approx.settings["calibration"]
    assert cal["n_inputs"] == 2
    rows = [0, 1]  # evenly spaced: (i * 3) // 2 for i in 0, 1
    exact = driver_effects(model, ids[rows], attention_mask=mask[rows], **QUIET)
    want = float(approx.per_input[rows].mean(0).sum() / exact.effect.sum())
    assert cal["ratio"] == pytest.approx(want, rel=1e-4)
    assert -1 <= cal["spearman"] <= 1 and "calibrated on 2 inputs: sum" in repr(approx)
    assert "calibration" not in driver_effects(model, ids, attention_mask=mask, method="first_order", calibrate=0, **QUIET).settings
    assert "calibration" not in driver_effects(model, ids, attention_mask=mask, **QUIET).settings  # exact needs none
