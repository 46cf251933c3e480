"""Expert representations: means against a per-token loop, the dense-experts fallback against
hook_expert_out, t-SNE/K-means frame, plot and round trip."""

from __future__ import annotations

import pytest
import torch

from moelens import HookedMoE, InvalidInputError
from moelens.analysis._routing_patch import expert_contribution
from moelens.analysis.representations import (
    ExpertRepresentations,
    expert_representations,
)
from moelens.testing import tiny_model


@pytest.fixture(scope="module")
def model():
    return HookedMoE.from_hf(tiny_model("mixtral", initializer_range=0.2))


def _data():
    gen = torch.Generator().manual_seed(0)
    return {"x": torch.randint(3, 97, (3, 7), generator=gen), "y": torch.randint(3, 97, (2, 9), generator=gen)}


def test_means_and_counts_match_a_token_loop(model):
    data = _data()
    reps = expert_representations(model, data, batch_size=2, progress=False)
    sums = torch.zeros(2, 4, 32, dtype=torch.float64)
    counts = torch.zeros(2, 2, 4)
    for di, ids in enumerate(data.values()):
        for row in ids:
            _, cache = model.run_with_cache(row[None])
            for li, layer in enumerate(model.cfg.moe_layers):
                index = cache[f"blocks.{layer}.moe.hook_topk_indices"][0]
                out = cache[f"blocks.{layer}.moe.hook_expert_out"][0]
                for t in range(len(row)):
                    for slot, e in enumerate(index[t].tolist()):
                        sums[li, e] += out[t, slot].double()
                        counts[di, li, e] += 1
    assert torch.equal(reps.counts, counts.double())
    total = counts.sum(0)[..., None]
    expected = torch.where(total > 0, sums / total.clamp_min(1), float("nan")).double()
    torch.testing.assert_close(reps.means, expected, equal_nan=True, atol=1e-6, rtol=1e-5)


def test_fallback_contribution_equals_hook_expert_out(model):
    """What dense-expert families use (expert_contribution at weight 1) is hook_expert_out."""
    ids = _data()["x"][:1]
    _, cache = model.run_with_cache(ids)
    x = cache["blocks.1.moe.hook_in"][0]
    index = cache["blocks.1.moe.hook_topk_indices"][0]  # [pos k]
    got = expert_contribution(model, 1, x.repeat_interleave(2, 0), index.reshape(-1), torch.ones(index.numel()))
    torch.testing.assert_close(got.view(-1, 2, 32), cache["blocks.1.moe.hook_expert_out"][0].float(), atol=1e-5, rtol=1e-4)


def test_frame_plot_round_trip(model, tmp_path):
    reps = expert_representations(model, _data(), progress=False)
    frame = reps.to_frame(n_clusters=3)
    assert len(frame) == 8 and set(frame.cluster[frame["count"] > 0]) <= {0, 1, 2}
    assert set(frame.dominant_domain.dropna()) <= {"x", "y"}
    used = frame["count"] > 0
    assert frame.tsne_x[used].notna().all() and frame.tsne_x[~used].isna().all()
    reps.plot(tmp_path / "reps.png")
    back = ExpertRepresentations.load(reps.save(tmp_path / "reps"))
    assert torch.equal(back.counts, reps.counts) and back.domains == ["x", "y"]
    assert "experts used" in repr(reps)
    with pytest.raises(InvalidInputError, match="n_clusters=99"):
        reps.kmeans(99)
