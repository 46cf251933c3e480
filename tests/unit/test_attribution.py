"""Token attribution: gradient x input against central finite differences (float64, several
families), exact zeros after the target position, a planted token that forces an expert."""

from __future__ import annotations

import functools

import pytest
import torch

from moelens import HookedMoE, InvalidInputError
from moelens.analysis.attribution import Attribution, token_attribution
from moelens.testing import tiny_model

from .planted import PLANTED_EXPERT, PLANTED_TOKEN, planted_model

# softmax (mixtral), shared expert (qwen2_moe), sigmoid + selection bias + groups (deepseek_v3),
# expert input scaled by the score (llama4_text)
FAMILIES = ["mixtral", "qwen2_moe", "deepseek_v3", "llama4_text"]
IDS = torch.tensor([5, 17, 33, 8, 61, 12, 40])


@functools.cache
def _double(family: str) -> HookedMoE:
    return HookedMoE.from_hf(tiny_model(family, experts_implementation="eager", initializer_range=0.2).double())


def _logit(model: HookedMoE, embeddings: torch.Tensor, layer: int, expert: int, position: int) -> float:
    """Router logit computed independently: full forward from the embeddings, read from the cache."""
    name = f"blocks.{layer}.moe.hook_router_logits"
    with torch.no_grad():
        _, cache = model.run_with_cache(embeddings, names_filter=name, start_at_layer=0)
    return float(cache[name][0, position, expert])


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_times_input_matches_central_differences(family):
    model = _double(family)
    layer, expert, position = model.cfg.moe_layers[-1], 1, 4
    att = token_attribution(model, IDS, layer, expert, position=position, method="gradient")
    x = model(IDS[None], stop_at_layer=0).detach()  # input embeddings [1 pos d_model]
    # float64 weights, but routers compute their softmax in float32 (HF's .float()), so small steps
    # drown in that rounding: central differences at h and h/2 with Richardson extrapolation
    # (error O(h^4)) at h = 0.02.

    def central(t: int, h: float) -> float:
        up, down = x.clone(), x.clone()
        up[0, t] *= 1 + h  # d/ds f(x_t * s) at s = 1 is grad_t . x_t
        down[0, t] *= 1 - h
        return (_logit(model, up, layer, expert, position) - _logit(model, down, layer, expert, position)) / (2 * h)

    scale = float(att.scores.abs().max())
    for t in range(position + 1):
        fd = (4 * central(t, 0.01) - central(t, 0.02)) / 3
        assert float(att.scores[t]) == pytest.approx(fd, abs=2e-3 * scale), t
    assert att.target == pytest.approx(_logit(model, x, layer, expert, position), abs=1e-10)


@pytest.mark.parametrize("method", ["gradient", "ablation", "integrated_gradients"])
def test_tokens_after_the_position_get_exactly_zero(method):
    model = HookedMoE.from_hf(tiny_model("qwen2_moe"))
    att = token_attribution(model, IDS, 1, 2, position=3, method=method, steps=8)
    assert torch.equal(att.scores[4:], torch.zeros(3, dtype=torch.float64))
    assert bool((att.scores[:4] != 0).any())


def test_zeros_after_the_position_are_causal():
    """Cutting the text after the position is what causality allows: running the later tokens (one
    ablated at a time) moves the target by float rounding only."""
    model = _double("mixtral")
    att = token_attribution(model, IDS, 1, 2, position=3, method="ablation", baseline=0)
    x = model(IDS[None], stop_at_layer=0).detach()
    base = model(torch.tensor([[0]]), stop_at_layer=0)[0, 0]
    for t in range(4, len(IDS)):
        ablated = x.clone()
        ablated[0, t] = base
        assert _logit(model, ablated, 1, 2, 3) == pytest.approx(att.target, abs=1e-12)


@pytest.mark.parametrize("method", ["ablation", "integrated_gradients"])
def test_planted_token_gets_the_largest_attribution(method):
    model = planted_model(zero_attention=False)  # attention on: other tokens reach the position too
    ids = torch.tensor([7, 19, 23, PLANTED_TOKEN, 31, 44, 52])
    for position in (3, 5):
        att = token_attribution(model, ids, 0, PLANTED_EXPERT, position=position, method=method)
        expected = 3 if position == 3 else int(att.scores.abs().argmax())
        assert int(att.scores.abs().argmax()) == expected
    # at the planted position the planted token dominates the expert's router logit
    att = token_attribution(model, ids, 0, PLANTED_EXPERT, position=3, method=method)
    others = att.scores[:3].abs().max()
    assert att.scores[3] > 10 * others and att.top(1).token_id[0] == PLANTED_TOKEN


def test_integrated_gradients_complete():
    """Attributions sum to z(x) - z(baseline) when the path crosses no top-k switch: the target is
    the first MoE layer (layer 0 of deepseek_v3 is dense), so no routing lies upstream."""
    model = _double("deepseek_v3")
    att = token_attribution(model, IDS, 1, 3, position=5, method="integrated_gradients", steps=64)
    assert float(att.scores.sum()) == pytest.approx(att.target - att.settings["baseline_target"], rel=1e-2, abs=1e-2)


def test_result_frame_plot_round_trip(tmp_path):
    model = HookedMoE.from_hf(tiny_model("mixtral"))
    att = token_attribution(model, IDS, 1, 0, method="ablation", baseline=2)
    assert list(att.to_frame().columns) == ["position", "token_id", "token", "attribution"]
    back = Attribution.load(att.save(tmp_path / "att"))
    assert torch.equal(back.scores, att.scores) and back.tokens == att.tokens and back.position == len(IDS) - 1
    att.plot(tmp_path / "att.png")
    assert repr(att).startswith("Attribution(ablation, L1E0 at position 6")


def test_bad_arguments():
    model = HookedMoE.from_hf(tiny_model("mixtral"))
    with pytest.raises(InvalidInputError, match="method='saliency'"):
        token_attribution(model, IDS, 1, 0, method="saliency")
    with pytest.raises(InvalidInputError, match="layer 5 is not an MoE layer"):
        token_attribution(model, IDS, 5, 0)
    with pytest.raises(InvalidInputError, match="expert=4: expert 4 is out of range"):
        token_attribution(model, IDS, 1, 4)
    with pytest.raises(InvalidInputError, match="position=7 is outside"):
        token_attribution(model, IDS, 1, 0, position=7)
    with pytest.raises(InvalidInputError, match="needs a tokenizer"):
        token_attribution(model, IDS, 1, 0, method="ablation", baseline="pad")
    with pytest.raises(InvalidInputError, match="one str or the token ids"):
        token_attribution(model, torch.ones(2, 3, dtype=torch.long), 1, 0)
