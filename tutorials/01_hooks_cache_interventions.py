# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 1. Hook points, caches and interventions
#
# We wrap the zoo's trained Mixtral (`moelens/mixtral-tiny`: 4 layers, 8 experts, top-2), read its
# routing through hook points, and change it with interventions. Everything here runs on a laptop
# CPU in seconds. Claim tested: none yet; this is the vocabulary the other tutorials use.

# %%
import os

import torch

from moelens import Ablate, Force, HookedMoE, Perturb, Scale

model = HookedMoE.from_pretrained("moelens/mixtral-tiny", dtype=torch.float32)
print(model)
print(len(model.hook_names), "hook points, e.g.", model.hook_names[:4])

# %% [markdown]
# ## Exactness: the wrapped model is HF's model
# No hook, no change: the logits are bit-identical to the HF forward.

# %%
texts = ["Review: a warm and funny film\nSentiment:", "Question: What is 7 + 5?\nAnswer:"]
ids, mask = model.to_tokens(texts, return_mask=True)
with torch.inference_mode():
    hf_logits = model.hf_model(input_ids=ids, attention_mask=mask).logits
    logits, cache = model.run_with_cache(texts)
print("bit-identical on real tokens:", torch.equal(hf_logits[mask.bool()], logits[mask.bool()]))

# %% [markdown]
# ## The cache's routing helpers
# `topk_mask()` is `[moe_layer batch pos n_experts]`; padding positions are in `cache.attention_mask`.

# %%
topk = cache.topk_mask()
real = cache.attention_mask
for layer, layer_mask in zip(model.cfg.moe_layers, topk):
    load = layer_mask[real].float().mean(0)
    print(f"layer {layer}: expert load", [round(x, 2) for x in load.tolist()])

# %% [markdown]
# ## Seeing the routing
# In a notebook a cache displays as a table of its hook points with a heatmap of how often each
# expert was chosen, and `moelens.viz.routing_tokens` shows a text's tokens coloured by the gate
# weight of one expert (choose the MoE layer and the expert above the text). Both work offline; a
# view saves to one standalone HTML file with `view.save("routing.html")`.

# %%
from moelens.viz import routing_tokens  # noqa: E402

try:  # Jupyter (and the docs build) displays rich output; as a script this is a no-op
    display  # noqa: B018
except NameError:
    def display(*objects):  # noqa: D103
        return None

display(cache)
display(routing_tokens(model, texts[0]))

# %% [markdown]
# ## Interventions
# Ablating the expert that the sentiment prompt's last token uses most, at every layer, and
# measuring how much the " positive" vs " negative" preference moves.

# %%
pos_id = model.tokenizer.encode(" positive", add_special_tokens=False)[0]
neg_id = model.tokenizer.encode(" negative", add_special_tokens=False)[0]
prompt = texts[0]


def preference(logits: torch.Tensor) -> float:
    last = logits[0, -1].log_softmax(-1)
    return float(last[pos_id] - last[neg_id])


with torch.inference_mode():
    clean = preference(model(prompt))
    _, prompt_cache = model.run_with_cache(prompt, names_filter=lambda n: n.endswith("hook_topk_indices"))
    last_experts = prompt_cache.topk_indices()[:, 0, -1, 0]  # top-1 expert at the last token, per layer
    edits = {
        "ablate top-1 expert (route)": [Ablate(layer, int(e)) for layer, e in zip(model.cfg.moe_layers, last_experts)],
        "down-weight it (x0.8 logits)": [Scale(layer, int(e), 0.8) for layer, e in zip(model.cfg.moe_layers, last_experts)],
        "force expert 0 everywhere": [Force("all", 0)],
        "perturb expert 0 (-1 logit)": [Perturb("all", 0)],
    }
    print(f"clean log P(positive) - log P(negative) = {clean:+.3f}")
    for name, edit in edits.items():
        print(f"{name:32s} {preference(model.run_with_interventions(prompt, edit)):+.3f}")

# %% [markdown]
# ## A batched sweep
# `experts` can be a `[batch]` tensor: one target per row, so a sweep over every expert of a layer
# is one forward.

# %%
layer = model.cfg.moe_layers[1]
n = model.cfg.n_experts
with torch.inference_mode():
    swept = model.run_with_interventions([prompt] * n, Perturb(layer, torch.arange(n), magnitude=2.0))
for expert in range(n):
    print(f"perturb layer {layer} expert {expert}: preference {preference(swept[expert:expert + 1]):+.3f}")
