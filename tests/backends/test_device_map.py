"""Checkpoints larger than one device: ``HookedMoE.from_pretrained(..., device_map=...)``.

accelerate places each layer on its device, or offloads it to the CPU or disk and wraps it in
hooks that load the weights for the duration of its forward. Hook values, cache tensors and
interventions must follow each layer's device, and the results must equal the model loaded whole.
Here (CPU only) the map offloads the embedding and some decoder layers to disk, so the first
parameter of the model lives on the meta device.
"""

from __future__ import annotations

import pytest
import torch

from moelens import Ablate, Force, HookedMoE, Perturb, Scale, collect_routing_stats
from moelens.testing import tiny_model
from tests.models import token_batch

MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])


def _folder(family: str, root: str) -> str:
    tiny_model(family).save_pretrained(root)  # weights and config; token ids only, no tokenizer
    return root


def _device_map(n_layers: int) -> dict[str, str]:
    mapping = {"model.embed_tokens": "disk", "model.norm": "cpu", "lm_head": "cpu", "model.rotary_emb": "cpu"}
    for index in range(n_layers):
        mapping[f"model.layers.{index}"] = "disk" if index % 2 else "cpu"
    return mapping


@pytest.mark.filterwarnings("ignore:no tokenizer could be loaded")
@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3"])
def test_disk_offloaded_model_matches_the_model_loaded_whole(family, tmp_path):
    folder = _folder(family, str(tmp_path / family))
    whole = HookedMoE.from_pretrained(folder)
    spread = HookedMoE.from_pretrained(
        folder, device_map=_device_map(whole.cfg.n_layers), offload_folder=str(tmp_path / "offload")
    )
    assert next(spread.hf_model.parameters()).device.type == "meta"  # the embedding is on disk
    assert spread.device == torch.device("cpu")  # where inputs go: accelerate's execution device
    ids = token_batch(6)
    ref_logits, ref = whole.run_with_cache(ids, attention_mask=MASK)
    logits, cache = spread.run_with_cache(ids, attention_mask=MASK, device="cpu")
    assert torch.equal(logits, ref_logits)
    assert set(cache) == set(ref) and all(torch.equal(cache[name], ref[name]) for name in ref)
    first, last = whole.cfg.moe_layers[0], whole.cfg.moe_layers[-1]
    for intervention in (Perturb("all", 1, magnitude=4.0), Ablate(last, 2), Scale(first, 0, 0.5, on="weights"), Force(last, 3)):
        assert torch.equal(
            spread.run_with_interventions(ids, intervention, attention_mask=MASK),
            whole.run_with_interventions(ids, intervention, attention_mask=MASK),
        ), intervention
    domains = {"a": (ids, MASK)}
    assert torch.equal(
        collect_routing_stats(spread, domains, progress=False).cwas(), collect_routing_stats(whole, domains, progress=False).cwas()
    )
