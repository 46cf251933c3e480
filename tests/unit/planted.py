"""A tiny Mixtral where one token id forces one expert of MoE layer 0, exactly.

Every embedding has component 1 = 1 and component 0 = 0 except the planted token's (component 0 = 1,
component 1 = 0); the router row of the planted expert is ``+20 e_0 - 20 e_1`` and the other rows have
no weight on those two axes. With layer 0's attention output switched off (``zero_attention``), the
MoE input at a position is the normalised embedding of its token: the planted expert's router logit
is about +113 at the planted token and -113 elsewhere, so it is selected exactly there.
"""

from __future__ import annotations

import torch

from moelens import HookedMoE
from moelens.architectures import resolve
from moelens.testing import tiny_model

PLANTED_TOKEN = 42
PLANTED_EXPERT = 3


def planted_model(zero_attention: bool = True, seed: int = 0) -> HookedMoE:
    hf = tiny_model("mixtral", seed)
    model = HookedMoE.from_hf(hf)
    with torch.no_grad():
        emb = hf.get_input_embeddings().weight  # [vocab d_model]
        emb[:, 0] = 0.0
        emb[:, 1] = 1.0
        emb[PLANTED_TOKEN, 0], emb[PLANTED_TOKEN, 1] = 1.0, 0.0
        layer0 = model.layers[0]
        if zero_attention:
            layer0.self_attn.o_proj.weight.zero_()
        router = resolve(resolve(layer0, model.spec.moe_block), model.spec.router)
        router.weight[:, :2] = 0.0
        router.weight[PLANTED_EXPERT] = 0.0
        router.weight[PLANTED_EXPERT, 0], router.weight[PLANTED_EXPERT, 1] = 20.0, -20.0
    return model
