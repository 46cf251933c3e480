"""collect_routing_stats: planted ground truth, invariances, checkpoint/resume, token records, real data."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from moelens import HookedMoE, RoutingStats, collect_routing_stats
from moelens.testing import tiny_model

from ..models import wrapped
from ..tolerance import float_tol

def planted_model() -> HookedMoE:
    """Mixtral whose residual stream is the token embedding (attention and experts write zero):
    tokens 10-39 ("a") point along e0, 40-69 ("b") along e1, and all of them along e2. Routers:
    expert 0 reads e0, expert 1 reads e1, expert 2 reads e2 (always on), expert 3 is never chosen."""
    hf = tiny_model("mixtral", 0)
    d = hf.config.hidden_size
    with torch.no_grad():
        noise = torch.randn(97, d, generator=torch.Generator().manual_seed(1)) * 0.05
        embed = noise.clone()
        embed[10:40, 0] += 3.0
        embed[40:70, 1] += 3.0
        embed[10:70, 2] += 2.0
        hf.model.embed_tokens.weight.copy_(embed)
        for layer in hf.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.experts.down_proj.zero_()
            router = torch.zeros(4, d)
            router[0, 0], router[1, 1], router[2, 2], router[3, 2] = 5.0, 5.0, 4.0, -1.0
            layer.mlp.gate.weight.copy_(router)
    return HookedMoE.from_hf(hf)


def domain_ids(low: int, high: int, n: int, seed: int) -> torch.Tensor:
    return torch.randint(low, high, (n, 7), generator=torch.Generator().manual_seed(seed))


def test_planted_domain_and_general_experts_are_recovered():
    model = planted_model()
    stats = collect_routing_stats(model, {"a": domain_ids(10, 40, 12, 0), "b": domain_ids(40, 70, 12, 1)}, batch_size=5, progress=False)
    for domain, planted in (("a", 0), ("b", 1)):
        top = stats.domain_experts(domain, top=2)
        assert top["expert"].tolist() == [planted, planted]
        assert sorted(top["layer"].tolist()) == [0, 1]
        assert (top["lift"] > 0.5).all()
    general = stats.general_experts(top=2)
    assert general["expert"].tolist() == [2, 2]
    assert (general["min_activation_rate"] == 1.0).all()
    assert torch.equal(stats.counts[:, :, 3], torch.zeros(2, 2, dtype=torch.int64))  # never routed
    assert torch.allclose(stats.activation_rate.sum(-1), torch.full((2, 2), 2.0, dtype=torch.float64))


def _padded(ids: torch.Tensor, lengths: list[int], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    n, width = ids.shape
    out, mask = torch.zeros_like(ids), torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        target = slice(0, length) if side == "right" else slice(width - length, width)
        out[row, target], mask[row, target] = ids[row, :length], 1
    return out, mask


def _near_ties(model: HookedMoE, ids: torch.Tensor, mask: torch.Tensor) -> int:
    """Real tokens x MoE layers whose k-th and (k+1)-th router logits lie closer than float32 rounding:
    only there may another batch layout (other kernel blocking, other roundings) choose other experts.
    Softmax and sigmoid scores rank like the logits; with a routing bias or a group limit (deepseek_v3)
    the gap of the logits is a proxy for the gap of what the family ranks."""
    _, cache = model.run_with_cache(ids, attention_mask=mask, names_filter=lambda name: name.endswith("hook_router_logits"))
    k, ties = model.cfg.top_k, 0
    for layer in model.cfg.moe_layers:
        logits = cache[f"blocks.{layer}.moe.hook_router_logits"].float()
        ranked = logits.sort(-1, descending=True).values
        tol = float_tol(torch.float32, logits, ulps=64)
        ties += int(((ranked[..., k - 1] - ranked[..., k]) < tol)[mask.bool()].sum())
    return ties


def _assert_same(a: RoutingStats, b: RoutingStats, near_ties: int) -> None:
    """Token counts equal; expert counts equal but for near-tie tokens (each can move one count from one
    expert to another: 2 per tie); float sums within float32 rounding."""
    assert torch.equal(a.n_tokens, b.n_tokens)
    assert int((a.counts - b.counts).abs().sum()) <= 2 * near_ties, (near_ties, a.counts - b.counts)
    # sums (float64) of float32 per-token values computed in another batch layout: roundings of float32
    rtol = float_tol(torch.float32, 1.0)
    torch.testing.assert_close(a.entropy_sums, b.entropy_sums, rtol=rtol, atol=rtol)
    torch.testing.assert_close(a.score_sums, b.score_sums, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3"])
def test_results_do_not_depend_on_batch_size_padding_side_or_order(family):
    model = wrapped(family)
    ids = torch.randint(3, 97, (7, 9), generator=torch.Generator().manual_seed(3))
    lengths = [9, 4, 6, 9, 2, 7, 5]
    right = _padded(ids, lengths, "right")
    left = _padded(ids, lengths, "left")
    order = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    base = collect_routing_stats(model, {"x": right}, batch_size=7, progress=False)
    ties = _near_ties(model, *right)  # 0 for these seeds here: the counts must then be equal
    _assert_same(base, collect_routing_stats(model, {"x": right}, batch_size=2, progress=False), ties)
    _assert_same(base, collect_routing_stats(model, {"x": left}, batch_size=3, progress=False), ties)
    _assert_same(base, collect_routing_stats(model, {"x": (right[0][order], right[1][order])}, batch_size=4, progress=False), ties)
    assert int(base.n_tokens[0, 0]) == sum(lengths)


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    model = wrapped("qwen2_moe")
    data = {"a": domain_ids(3, 97, 9, 4), "b": domain_ids(3, 97, 6, 5)}
    full = collect_routing_stats(model, data, batch_size=2, progress=False)
    calls = {"n": 0}

    def explode_on_fourth_batch(x, hook):
        if hook.layer == model.cfg.moe_layers[0]:
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), model.hooks([("blocks.0.hook_resid_pre", explode_on_fourth_batch)]):
        collect_routing_stats(model, data, batch_size=2, progress=False, checkpoint=tmp_path)
    other = {"a": domain_ids(3, 97, 9, 6), "b": data["b"]}
    with pytest.raises(ValueError, match="written for other inputs"):  # an interrupted run is not overwritten
        collect_routing_stats(model, other, batch_size=2, progress=False, checkpoint=tmp_path)
    resumed = collect_routing_stats(model, data, batch_size=2, progress=False, checkpoint=tmp_path)
    assert torch.equal(resumed.counts, full.counts) and torch.equal(resumed.n_tokens, full.n_tokens)
    assert torch.equal(resumed.entropy_sums, full.entropy_sums)
    # a finished run is superseded by the next call with other inputs
    fresh = collect_routing_stats(model, other, batch_size=2, progress=False, checkpoint=tmp_path)
    assert torch.equal(fresh.counts, collect_routing_stats(model, other, batch_size=2, progress=False).counts)


def test_token_records_hold_every_real_token(tmp_path):
    model = wrapped("mixtral")
    ids, mask = _padded(domain_ids(3, 97, 4, 7), [7, 3, 5, 1], "right")
    stats = collect_routing_stats(model, {"a": (ids, mask)}, batch_size=3, progress=False, token_records=tmp_path)
    chunks = [load_file(str(p)) for p in sorted(tmp_path.glob("*.safetensors"))]
    assert len(chunks) == 2
    token_ids = torch.cat([c["token_id"] for c in chunks])
    assert token_ids.numel() == 16 == int(stats.n_tokens[0, 0])
    experts = torch.cat([c["experts"] for c in chunks])
    assert experts.shape == (16, 2, 2)
    counts = torch.zeros(2, 4, dtype=torch.int64)
    for layer in range(2):
        counts[layer] = torch.bincount(experts[:, layer].flatten().long(), minlength=4)
    assert torch.equal(counts, stats.counts[0])
    relative = torch.cat([c["relative_position"] for c in chunks])
    assert float(relative.min()) == 0.0 and float(relative.max()) == 1.0


def test_bad_domain_inputs_raise_clear_errors():
    model = wrapped("mixtral")
    with pytest.raises(ValueError, match="no tokenizer"):
        collect_routing_stats(model, {"a": ["some text"]}, progress=False)
    with pytest.raises(ValueError, match="domains is empty"):
        collect_routing_stats(model, {}, progress=False)
    with pytest.raises(ValueError, match=r"must be \[n pos\]"):
        collect_routing_stats(model, {"a": torch.ones(3, dtype=torch.long)}, progress=False)


@pytest.mark.needs_data("sst2/validation.jsonl", "mmlu/test.jsonl", "gsm8k/test.jsonl")
def test_real_data_through_a_tiny_model_round_trips(tmp_path, data_dir):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from moelens.tasks import format_prompt, load_records

    texts = {
        name: [format_prompt(r, name) for r in load_records(name, data_dir=data_dir, limit=200)]
        for name in ("sst2", "mmlu", "gsm8k")
    }
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel()
    backend.train_from_iterator([t for ts in texts.values() for t in ts], trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<unk>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>")
    hf = tiny_model("olmoe", 0, vocab_size=len(tokenizer))
    model = HookedMoE.from_hf(hf, tokenizer)
    stats = collect_routing_stats(model, texts, batch_size=32, max_length=64, progress=False)
    assert stats.cwas().shape == (3, 2, 4)
    assert torch.allclose(stats.activation_rate.sum(-1), torch.full((3, 2), 2.0, dtype=torch.float64))
    cwas = stats.cwas()
    assert bool(((cwas >= 0) & (cwas <= 1)).all())
    frame = stats.to_frame()
    assert len(frame) == 3 * 2 * 4
    stats.save(tmp_path / "stats")
    loaded = RoutingStats.load(tmp_path / "stats")
    assert loaded.to_frame().equals(frame)
