"""Driver effects: the exact sweep against an independent naive loop, planted ground truth,
the gradient estimators against the exact sweep, checkpoint resume, persistence, agreement."""

import functools
import json

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from moelens import HookedMoE, InvalidInputError, Perturb
from moelens.analysis.agreement import compare_effects
from moelens.analysis.drivers import DriverEffects, driver_effects
from moelens.metrics import kl_divergence
from moelens.testing import sharpen_routers, tiny_model

from ..parity.deepseek_remote import deepseek_v1_tiny
from ..tolerance import kl_tol

# initializer_range=0.2: next-token distributions far from uniform, so KLs sit well above fp32
# rounding (the default 0.02 gives effects near 1e-7, i.e. rounding noise).
SHARP = {"initializer_range": 0.2}
QUIET = {"progress": False}


@functools.cache
def model_of(family: str, seed: int = 0) -> HookedMoE:
    return HookedMoE.from_hf(tiny_model(family, seed, **SHARP))


def batch(seed: int = 0, n: int = 3, pos: int = 6, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and a padded mask: row 1 keeps 4 tokens, row 2 keeps 5."""
    ids = torch.randint(3, 97, (n, pos), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    mask[2, 5:] = 0
    if left:
        mask = mask.flip(-1)
    return ids, mask


def naive_effects(model, ids, mask, positions="last", magnitude=1.0, sign=-1) -> torch.Tensor:
    """The definition, one full forward per (layer, expert): ``[input moe_layer expert]``."""
    layers, n = model.cfg.moe_layers, model.cfg.n_experts
    out = torch.zeros(ids.shape[0], len(layers), n, dtype=torch.float64)
    real = mask.bool()
    last = (real * torch.arange(1, ids.shape[1] + 1)).argmax(-1)
    rows = torch.arange(ids.shape[0])
    with torch.no_grad():
        clean = model(ids, attention_mask=mask)
        for i, layer in enumerate(layers):
            for expert in range(n):
                push = Perturb(layer, expert, magnitude=magnitude, sign=sign)
                q = model.run_with_interventions(ids, [push], attention_mask=mask)
                if positions == "last":
                    out[:, i, expert] = kl_divergence(clean[rows, last], q[rows, last]).double()
                else:
                    kl = kl_divergence(clean, q, mask=real)
                    out[:, i, expert] = (kl.sum(-1) / real.sum(-1)).double()
    return out


# -- exact sweep == naive loop -----------------------------------------------------------------------


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3"])  # softmax and sigmoid routers
@pytest.mark.parametrize("positions", ["last", "all"])
def test_exact_equals_naive_loop(family, positions):
    model = model_of(family)
    ids, mask = batch()
    got = driver_effects(model, ids, attention_mask=mask, positions=positions, per_input=True, batch_size=2, **QUIET)
    want = naive_effects(model, ids, mask, positions)
    assert got.per_input.shape == want.shape == (3, len(model.cfg.moe_layers), model.cfg.n_experts)
    atol = kl_tol(model, ids, mask)  # the sweep batches (layer, expert) pairs as rows; the loop runs one at a time
    assert float(want.max()) > 1000 * atol  # effects well above rounding
    torch.testing.assert_close(got.per_input, want, rtol=1e-4, atol=atol)
    torch.testing.assert_close(got.effect, want.mean(0), rtol=1e-4, atol=atol)
    assert got.moe_layers == model.cfg.moe_layers


def test_exact_equals_naive_without_skipping_left_padding_push_up():
    model = model_of("mixtral")
    ids, mask = batch(seed=1, left=True)
    kwargs = {"attention_mask": mask, "perturbation": {"magnitude": 0.5, "sign": 1}, "per_input": True}
    want = naive_effects(model, ids, mask, magnitude=0.5, sign=1)
    run = driver_effects(model, ids, skip_unchanged=False, max_tokens=12, **kwargs, **QUIET)  # 2 rows per forward
    skip = driver_effects(model, ids, **kwargs, **QUIET)
    atol = kl_tol(model, ids, mask)
    torch.testing.assert_close(run.per_input, want, rtol=1e-4, atol=atol)
    torch.testing.assert_close(skip.per_input, want, rtol=1e-4, atol=atol)
    # Renormalised softmax: pushing an expert that is never selected changes nothing, and is skipped.
    assert bool((skip.per_input == 0).any())


def test_layer_subset_matches_full_sweep():
    model = model_of("deepseek_v3")
    ids, mask = batch()
    full = driver_effects(model, ids, attention_mask=mask, **QUIET)
    last = model.cfg.moe_layers[-1]
    part = driver_effects(model, ids, attention_mask=mask, layers=[last], **QUIET)
    assert part.moe_layers == (last,)
    torch.testing.assert_close(part.effect[0], full.effect[-1], rtol=1e-4, atol=kl_tol(model, ids, mask))


@pytest.mark.parametrize("family", ["mixtral", "olmoe", "deepseek_v3", "gpt_oss", "phimoe"])
def test_rule_based_perturbed_routing_equals_the_perturb_hook(family):
    # The sweep re-routes from the clean router logits with the family's rule, for all targets at
    # once; a real forward under Perturb must select the same experts with the same weights.
    from moelens.analysis.drivers.options import SweepOptions, parse_push
    from moelens.analysis.drivers.routing import perturbed_routing

    model = model_of(family)
    layer = model.cfg.moe_layers[-1]
    ids, mask = batch()
    names = [f"blocks.{layer}.moe.{s}" for s in ("hook_router_logits", "hook_topk_indices", "hook_topk_weights")]
    _, clean = model.run_with_cache(ids, names_filter=names, attention_mask=mask)
    spec = SweepOptions("exact", parse_push((0.7, 1)), "last", (layer,))
    experts = torch.arange(model.cfg.n_experts)
    logits = clean[names[0]].reshape(-1, model.cfg.n_experts)
    index, weights = perturbed_routing(model, layer, logits, experts, spec.delta, clean[names[2]].dtype)
    for expert in experts.tolist():
        _, cache = model.run_with_cache(ids, names_filter=names[1:], attention_mask=mask, fwd_hooks=[spec.at(layer, torch.full((3,), expert))])
        assert torch.equal(index[expert], cache[names[1]].reshape(index.shape[1:]))
        assert torch.equal(weights[expert], cache[names[2]].reshape(weights.shape[1:]))


# -- planted ground truth ----------------------------------------------------------------------------


def test_planted_dominant_expert_ranks_first():
    # Sigmoid routing without renormalisation: an expert's weight depends on its own logit only. The
    # planted expert is always selected (selection bias), its logit stays O(1) (no saturation), and
    # it is the only routed expert with an output, scaled up: its push must rank first, and a push
    # on any other expert changes nothing at all.
    hf = tiny_model("deepseek_v3", 0, norm_topk_prob=False, n_group=1, topk_group=1, routed_scaling_factor=1.0, **SHARP)
    layer, expert = 2, 5
    with torch.no_grad():
        for index in (1, 2):
            mlp = hf.model.layers[index].mlp
            kept = mlp.experts.down_proj[expert].clone() * 4.0
            mlp.experts.down_proj.zero_()
            if index == layer:
                mlp.experts.down_proj[expert] = kept
                mlp.gate.weight[expert] *= 0.1
                mlp.gate.e_score_correction_bias[expert] = 10.0
    model = HookedMoE.from_hf(hf)
    ids, mask = batch(n=4, pos=8)
    for method in ("exact", "first_order", "router_gradient"):
        effects = driver_effects(model, ids, attention_mask=mask, method=method, positions="all", **QUIET)
        top = effects.top(2)
        assert (int(top.layer[0]), int(top.expert[0])) == (layer, expert), method
        assert float(top.effect[0]) > 1e-3 and float(top.effect[1]) < 1e-9 * float(top.effect[0]), method


def test_never_routed_expert_has_zero_effect():
    hf = tiny_model("gpt_oss", 0, **SHARP)  # a router with a bias
    layer, expert = 0, 1
    with torch.no_grad():
        hf.model.layers[layer].mlp.router.bias[expert] = -1e4  # never in the top-k
    model = HookedMoE.from_hf(hf)
    ids, mask = batch()
    _, cache = model.run_with_cache(ids, names_filter=f"blocks.{layer}.moe.hook_topk_indices", attention_mask=mask)
    assert not bool((cache[f"blocks.{layer}.moe.hook_topk_indices"] == expert).any())
    for method in ("exact", "first_order", "router_gradient"):
        for skip in (True, False):
            effects = driver_effects(model, ids, attention_mask=mask, method=method, skip_unchanged=skip, **QUIET)
            # Skipped pairs are exactly 0; run anyway, stacked rows differ from the clean batch by rounding.
            bound = 0.0 if skip else 1e-6
            assert float(effects.effect[0, expert]) <= bound, (method, skip)
            assert float(effects.effect.max()) > 1e-3


# -- gradient estimators -----------------------------------------------------------------------------


def test_first_order_approaches_exact_for_small_pushes():
    model = model_of("mixtral")
    ids, mask = batch(n=4, pos=8)
    kwargs = {"attention_mask": mask, "perturbation": (0.05, -1), **QUIET}
    exact = driver_effects(model, ids, **kwargs)
    full = driver_effects(model, ids, method="first_order", n_targets=model.cfg.d_vocab, **kwargs)
    assert full.settings["n_targets"] == model.cfg.d_vocab
    big = exact.effect > 0.05 * exact.effect.max()
    ratio = full.effect[big] / exact.effect[big]
    # Only the downstream linearisation differs (a near-tie swapping even at this push is the worst case).
    assert float((ratio - 1).abs().median()) < 0.05 and float((ratio - 1).abs().max()) < 0.2, ratio
    report = compare_effects(full, exact, n=3)  # the smallest effects are near fp32 rounding: ranks of the top
    assert report.top_overlap == 1.0 and abs(report.ratio - 1) < 0.05 and report.spearman > 0.8
    top8 = driver_effects(model, ids, method="first_order", n_targets=8, **kwargs)
    assert compare_effects(top8, exact, n=3).pearson_log > 0.9  # 8 of 97 tokens: a coarser estimate
    router = driver_effects(model, ids, method="router_gradient", n_targets=model.cfg.d_vocab, **kwargs)
    assert compare_effects(router, exact, n=3).pearson_log > 0.9


def test_first_order_all_positions_and_sampled_targets():
    model = model_of("deepseek_v3")
    ids, mask = batch()
    exact = driver_effects(model, ids, attention_mask=mask, positions="all", perturbation=(0.1, -1), **QUIET)
    sampled = driver_effects(
        model, ids, attention_mask=mask, positions="all", perturbation=(0.1, -1), method="first_order",
        targets="sample", n_targets=64, seed=3, **QUIET,
    )
    again = driver_effects(
        model, ids, attention_mask=mask, positions="all", perturbation=(0.1, -1), method="first_order",
        targets="sample", n_targets=64, seed=3, **QUIET,
    )
    assert torch.equal(sampled.effect, again.effect)  # seeded
    assert compare_effects(sampled, exact, n=4).spearman > 0.8


def test_router_gradient_is_blind_to_swaps():
    # A large push up on an expert that an input never selects: the exact sweep sees it enter the
    # top-k, the router gradient (selection is piecewise constant) cannot.
    model = model_of("mixtral")
    ids, mask = batch()
    kwargs = {"attention_mask": mask, "perturbation": (50.0, 1), "per_input": True, **QUIET}
    exact = driver_effects(model, ids, **kwargs)
    router = driver_effects(model, ids, method="router_gradient", **kwargs)
    _, cache = model.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_topk_indices"), attention_mask=mask)
    selected = cache.topk_mask().any(2).permute(1, 0, 2)  # [input moe_layer expert]: ever selected
    unselected = ~selected
    assert bool(unselected.any())
    assert float(router.per_input[unselected].abs().max()) < 1e-12  # 0 up to rounding
    assert float(exact.per_input[unselected].max()) > 1e-3


def test_module_list_experts_first_order_and_router_gradient_refusal():
    # DeepSeek-MoE (remote code): ModuleList experts (no hook_expert_out: per-slot outputs come from
    # one-hot weight runs) and a router that never returns its logits.
    hf = deepseek_v1_tiny(0)
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if param.ndim == 2 and "gate.weight" not in name:
                param.mul_(8.0)  # a sharper next-token distribution
    model = HookedMoE.from_hf(sharpen_routers(hf))
    assert f"blocks.{model.cfg.moe_layers[0]}.moe.hook_expert_out" not in model.hook_names
    ids, _ = batch()
    exact = driver_effects(model, ids, perturbation=(0.5, -1), **QUIET)
    first = driver_effects(model, ids, perturbation=(0.5, -1), method="first_order", n_targets=97, **QUIET)
    report = compare_effects(first, exact, n=4)
    assert report.spearman > 0.9 and report.top_overlap >= 0.75
    with pytest.raises(InvalidInputError, match="method='first_order' instead"):
        driver_effects(model, ids, method="router_gradient", **QUIET)


# -- checkpoints -------------------------------------------------------------------------------------


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("method", ["exact", "first_order"])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, method):
    model = model_of("mixtral")
    ids = torch.randint(3, 97, (7, 5), generator=torch.Generator().manual_seed(4))
    kwargs = {"method": method, "batch_size": 2, "per_input": True, "targets": "sample", "n_targets": 4, **QUIET}
    calls = []
    detach = model.add_hook("blocks.0.moe.hook_out", lambda x, hook: calls.append(1))
    try:
        whole = driver_effects(model, ids, **kwargs)
    finally:
        detach()
    limit = len(calls) // 2  # midway through the run

    def bomb(x, hook):
        calls.append(1)
        if len(calls) > limit:
            raise Boom("killed")

    calls.clear()
    detach = model.add_hook("blocks.0.moe.hook_out", bomb)
    try:
        with pytest.raises(Boom):
            driver_effects(model, ids, checkpoint=tmp_path / "ckpt", **kwargs)
    finally:
        detach()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ckpt" / "state.safetensors"), framework="pt") as handle:
        steps_done = int(handle.metadata()["steps_done"])  # batches of 2 inputs
    assert 0 < steps_done < 4
    assert json.loads((tmp_path / "ckpt" / "fingerprint.json").read_text())["method"] == method
    resumed = driver_effects(model, ids, checkpoint=tmp_path / "ckpt", **kwargs)
    assert torch.equal(resumed.per_input, whole.per_input)
    # A finished checkpoint answers without recomputing anything (no forward at all).
    calls.clear()
    detach = model.add_hook("blocks.0.moe.hook_out", lambda x, hook: calls.append(1))
    try:
        again = driver_effects(model, ids, checkpoint=tmp_path / "ckpt", **kwargs)
    finally:
        detach()
    assert len(calls) == 0 and torch.equal(again.effect, whole.effect)


def test_checkpoint_refuses_other_arguments_and_other_models(tmp_path, monkeypatch):
    from moelens.analysis._io import Checkpoint

    model = model_of("mixtral")
    ids = torch.randint(3, 97, (2, 5), generator=torch.Generator().manual_seed(5))
    save = Checkpoint.save

    def save_then_die(self, *args, **kwargs):
        save(self, *args, **kwargs)
        raise Boom("killed after the first batch")

    with monkeypatch.context() as patched, pytest.raises(Boom):  # an unfinished checkpoint
        patched.setattr(Checkpoint, "save", save_then_die)
        driver_effects(model, ids, checkpoint=tmp_path, batch_size=1, **QUIET)
    with pytest.raises(InvalidInputError, match="magnitude: saved 1.0, now 2.0"):
        driver_effects(model, ids, checkpoint=tmp_path, perturbation=(2.0, -1), batch_size=1, **QUIET)
    with pytest.raises(InvalidInputError, match="inputs"):
        driver_effects(model, ids[:, :4], checkpoint=tmp_path, batch_size=1, **QUIET)
    other = HookedMoE.from_hf(tiny_model("mixtral", 1, **SHARP))
    with pytest.raises(InvalidInputError, match="another model"):
        driver_effects(other, ids, checkpoint=tmp_path, batch_size=1, **QUIET)


# -- inputs and errors -------------------------------------------------------------------------------


class CharTokenizer:
    """Enough of a tokenizer for moelens: one id per character, right padding."""

    pad_token, eos_token = "<pad>", "<eos>"

    def __call__(self, texts, return_tensors="pt", padding=True, truncation=False, max_length=None):
        rows = [[3 + (ord(c) % 90) for c in text][: max_length if truncation else None] for text in texts]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": mask}


def test_texts_give_the_same_result_as_their_token_ids():
    hf = tiny_model("mixtral", 0, **SHARP)
    model = HookedMoE.from_hf(hf, tokenizer=CharTokenizer())
    texts = ["the cat", "a dog ran", "hi"]
    from_texts = driver_effects(model, texts, batch_size=3, **QUIET)
    ids, mask = model.to_tokens(texts, return_mask=True)
    from_ids = driver_effects(model, ids, attention_mask=mask, batch_size=3, **QUIET)
    torch.testing.assert_close(from_texts.effect, from_ids.effect)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"method": "exactly"}, r"method='exactly'.*'exact', 'first_order', 'router_gradient'"),
        ({"positions": "first"}, r"positions='first'.*'last', 'all'"),
        ({"layers": [0, 5]}, r"layers=\[0, 5\]: layer 5 is not an MoE layer of this model; MoE layers are \[0, 1\]"),
        ({"layers": "some"}, r"layers='some'"),
        ({"targets": "best"}, r"targets='best'.*'top', 'sample'"),
        ({"perturbation": {"size": 1}}, r"unknown keys \['size'\]"),
        ({"perturbation": Perturb(0, 0, positions=-1)}, r"perturb_positions=-1"),
        ({"batch_size": 0}, r"batch_size=0 must be a positive int"),
    ],
)
def test_bad_arguments_name_the_value_and_the_choices(kwargs, pattern):
    model = model_of("mixtral")
    with pytest.raises(InvalidInputError, match=pattern):
        driver_effects(model, torch.tensor([[4, 5, 6]]), **kwargs, **QUIET)


def test_grad_modes():
    model = model_of("mixtral")
    ids = torch.tensor([[4, 5, 6, 7]])
    plain = driver_effects(model, ids, method="first_order", **QUIET)
    with torch.no_grad():
        inside = driver_effects(model, ids, method="first_order", **QUIET)
    torch.testing.assert_close(inside.effect, plain.effect)
    with torch.inference_mode():
        exact = driver_effects(model, ids, **QUIET)
        with pytest.raises(InvalidInputError, match="inference_mode"):
            driver_effects(model, ids, method="first_order", **QUIET)
    assert exact.effect.shape == (2, 4)
    assert all(p.grad is None for p in model.parameters())


def test_texts_without_tokenizer_and_bad_masks_raise():
    model = model_of("mixtral")
    with pytest.raises(InvalidInputError, match="no tokenizer"):
        driver_effects(model, ["a text"], **QUIET)
    with pytest.raises(InvalidInputError, match="attention_mask has shape"):
        driver_effects(model, torch.tensor([[4, 5, 6]]), attention_mask=torch.ones(1, 2), **QUIET)


# -- the result object -------------------------------------------------------------------------------


def planted_result() -> DriverEffects:
    effect = torch.tensor([[0.1, 0.0, 0.2], [0.9, 0.3, 0.3], [0.05, 0.0, 0.15]])
    per_input = torch.stack([effect * 0.5, effect * 1.5])
    return DriverEffects(effect, (1, 3, 5), 3, "exact", {"magnitude": 1.0, "sign": -1, "n_inputs": 2}, per_input)


def test_frames_rank_and_layer_totals():
    result = planted_result()
    top = result.top(3)
    assert top[["layer", "expert"]].values.tolist() == [[3, 0], [3, 1], [3, 2]]  # tie 0.3/0.3 by expert
    assert top["rank"].tolist() == [1, 2, 3]
    frame = result.to_frame()
    assert len(frame) == 9 and {"std", "sem", "share"} <= set(frame.columns)
    assert frame["share"].sum() == pytest.approx(1.0)
    totals = result.layer_totals()
    assert totals["layer"].tolist() == [1, 3, 5]
    assert totals["total"].tolist() == pytest.approx([0.3, 1.5, 0.2])
    assert totals["top_expert"].tolist() == [2, 0, 2]
    assert result.middle_share() == pytest.approx(1.5 / 2.0)
    assert "L3E0" in repr(result)


def test_save_load_round_trip_and_plots(tmp_path):
    result = planted_result()
    path = result.save(tmp_path / "drivers")
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    back = DriverEffects.load(tmp_path / "drivers.json")
    assert torch.equal(back.effect, result.effect) and torch.equal(back.per_input, result.per_input)
    assert (back.moe_layers, back.n_experts, back.method, back.settings) == (
        result.moe_layers, result.n_experts, result.method, result.settings)
    pd.testing.assert_frame_equal(back.to_frame(), result.to_frame())
    for plot, name in ((result.plot_heatmap, "heat.png"), (result.plot_layer_totals, "layers.png")):
        assert isinstance(plot(tmp_path / name), Figure) and (tmp_path / name).stat().st_size > 0
    assert isinstance(result.plot_heatmap(log=True), Figure)
    with pytest.raises(FileNotFoundError):
        DriverEffects.load(tmp_path / "missing")


def test_compare_effects():
    a = planted_result()
    same = compare_effects(a, a, n=3)
    assert same.spearman == pytest.approx(1.0) and same.top_overlap == 1.0 and same.ratio == pytest.approx(1.0)
    flipped = DriverEffects(-a.effect + 1, a.moe_layers, 3, "x")
    assert compare_effects(a, flipped).spearman == pytest.approx(-1.0)
    part = DriverEffects(a.effect[1:2], (3,), 3, "exact")
    assert compare_effects(a, part, n=1).n_pairs == 3 and compare_effects(a, part, n=1).common_top == ((3, 0),)
    with pytest.raises(ValueError, match="no MoE layer in common"):
        compare_effects(a, DriverEffects(a.effect[:1], (7,), 3, "exact"))
    with pytest.raises(ValueError, match="experts"):
        compare_effects(a, DriverEffects(torch.zeros(3, 2), (1, 3, 5), 2, "exact"))

