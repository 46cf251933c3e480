# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 4. Mediation through routing, token attribution, token triggers, expert representations
#
# Four questions about the zoo models on the real evaluation sets in `../shared/data` (splits the
# zoo never trained on):
#
# 1. When one word of a review flips, how much of the change in the answer goes *through the
#    routers' decisions*? (`routing_mediation`: total, indirect per expert / layer / position,
#    direct.)
# 2. Which earlier tokens made the router score an expert at one position? (`token_attribution`.)
# 3. Do early tokens trigger the driver experts, as the paper (arXiv 2601.10159) claims?
#    (`token_triggers(...).early_vs_late()`, with special tokens excluded, the last decile and a
#    control over all other experts.)
# 4. Do experts' mean outputs cluster by layer or by domain? (`expert_representations`.)
#
# Set `MOELENS_TUTORIAL_SMALL=1` for a quick run (CI does).

# %%
# %matplotlib inline
import os
from pathlib import Path

import torch

try:  # Jupyter (and the docs build) shows figures inline; as a script they go to files only
    display  # noqa: B018
except NameError:
    def display(*objects):  # noqa: D103
        return None

from moelens import HookedMoE, driver_effects, routing_mediation, token_attribution, token_triggers
from moelens.analysis import expert_representations, logit_diff
from moelens.analysis.mediation.report import sentiment_pair
from moelens.tasks.data import resolve_data_dir
from moelens.tasks.demo import PAPER_DATASETS, paper_domains

small = os.environ.get("MOELENS_TUTORIAL_SMALL") == "1"
per_domain = 16 if small else 160
out = Path(os.environ.get("MOELENS_TUTORIAL_OUT", "tutorials/_out")) / "04_mediation_attribution_triggers"
out.mkdir(parents=True, exist_ok=True)
data = paper_domains(per_domain)  # ../shared/data (or MOELENS_DATA_DIR) if present, else the packaged demo texts
source = resolve_data_dir()
print("data:", f"evaluation sets {PAPER_DATASETS} from {source}" if source else
      "the packaged demo texts (no ../shared/data found): 30-40 texts per domain, so the numbers below are "
      "a smaller, noisier version of the run quoted at the end")
# drivers are selected on the first texts of each domain (32), triggers measured on the others (128);
# with fewer texts (the demo texts), a quarter of each domain selects and the rest is held out
n_select = min(4 if small else 32, min(len(texts) for texts in data.values()) // 4)
select = {d: texts[:n_select] for d, texts in data.items()}
held_out = {d: texts[n_select:] for d, texts in data.items()}
model = HookedMoE.from_pretrained("moelens/mixtral-tiny", dtype=torch.float32)
print(model, {d: (len(select[d]), len(held_out[d])) for d in data})

# %% [markdown]
# ## 1. Mediation through routing
#
# Pairs: a review and the same review with one positive word swapped for a negative one
# (`funny -> dull`, ...), kept only when both tokenize to the same length (routing is patched
# position by position). Metric: the logit difference `' positive' - ' negative'` at the last
# position. Patching one expert's routing sets its gate weight at every position to the corrupted
# run's value, all other experts keep their clean gates; the layers after it route by their own rule.

# %%
# sst2 validation (about 1 review in 12 has a swap), or the demo reviews, whose lines end with their answer: cut it
reviews = [text.rsplit("\nSentiment:", 1)[0] + "\nSentiment:" for text in paper_domains(120 if small else 872)["sentiment"]]
pairs = [p for text in reviews if (p := sentiment_pair(model, {"sentiment": [text]})) is not None]
pairs = pairs[: 4 if small else 32]
print(len(pairs), "pairs, e.g.", pairs[0][2])
med = routing_mediation(model, [p[0] for p in pairs], [p[1] for p in pairs],
                        metric=logit_diff(model, " positive", " negative"), progress=not small)
print(med)
print(med.summary().to_string(index=False))
print(med.top(5).to_string(index=False))
display(med.plot(out / "mediation.png"))

# %% [markdown]
# ## 2. Token attribution
#
# For the expert with the largest indirect effect, which tokens of the first clean review raise its
# router logit at the word that was swapped? Gradient x input is nearly blind to a token's own
# position in a pre-norm model (RMSNorm is scale invariant); ablation (token replaced by the mean
# embedding) and integrated gradients from that baseline are not.

# %%
best = med.top(1).iloc[0]
layer, expert = int(best.layer), int(best.expert)
clean_ids, corrupt_ids = (model.to_tokens(t)[0] for t in pairs[0][:2])
position = int((clean_ids != corrupt_ids).nonzero()[0, 0])
for method in ("gradient", "ablation", "integrated_gradients"):
    att = token_attribution(model, pairs[0][0], layer, expert, position=position, method=method)
    print(f"{method:>21}: {att}")
display(att.plot(out / "attribution.png"))

# %% [markdown]
# ## 3. Token triggers of the driver experts: do early tokens trigger them?

# %%
selection_texts = [t for texts in select.values() for t in texts]
test_texts = [t for texts in held_out.values() for t in texts]
for name in ("moelens/mixtral-tiny", "moelens/qwen2moe-tiny"):
    model = HookedMoE.from_pretrained(name, dtype=torch.float32)
    drivers = driver_effects(model, selection_texts, method="exact", progress=False).top(10)
    trig = token_triggers(model, test_texts, drivers, progress=False)
    res = trig.early_vs_late(n_boot=2000)
    print(f"\n{name}: top drivers {list(zip(drivers.layer, drivers.expert))}")
    print(res)
    print(res.summary().to_string(index=False))
    with_bos = token_triggers(model, test_texts, drivers, exclude_special=False, progress=False).early_vs_late()
    print(f"  with special tokens kept: first - rest {with_bos.diff:+.4f} [{with_bos.ci[0]:+.4f}, {with_bos.ci[1]:+.4f}]")
    print(trig.top_tokens(2, min_count=5).to_string(index=False))
    display(trig.plot(out / f"{name.split('/')[-1]}-triggers.png"))

# %% [markdown]
# ## 4. Expert representations

# %%
reps = expert_representations(model, held_out, progress=False)
print(reps)
print(reps.to_frame(n_clusters=4).groupby("cluster")[["layer"]].agg(lambda x: sorted(set(x))).to_string())
display(reps.plot(out / "representations.png", n_clusters=4))

# %% [markdown]
# ## What our models show
#
# Measured with 128 held-out texts per domain (sst2 validation, MMLU test, GSM8K test), drivers
# selected (exact sweep, top 10) on 32 other texts per domain, 2,000 bootstrap resamples over texts:
#
# - **Early vs late.** On both zoo models the top drivers fire more on the first decile of a text
#   than on the rest: mixtral-tiny +0.027 (95% CI +0.023 to +0.030), qwen2moe-tiny +0.031 (+0.026 to
#   +0.035); 6 of the 10 drivers do so, against 41% and 50% of the other experts (the control).
#   But the **last** decile shows a larger excess (+0.052 and +0.039): the drivers fire more at
#   both ends of a text, where the prompt template puts fixed tokens (`Review:`/`Question:` at the
#   start, `Sentiment:`/`Answer:` at the end). By domain the early effect is absent on MMLU for
#   mixtral-tiny and on GSM8K for qwen2moe-tiny. So the claim holds in the narrow statistical
#   sense on these models, but "tokens at the edges of the prompt" describes the data better than
#   "early tokens". Keeping BOS doubles the early effect on mixtral-tiny (+0.052): that is why
#   special tokens are excluded by default.
# - **Mediation.** On 32 sst2 validation reviews with one positive word swapped for a negative one
#   (`good -> bad`, `funny -> dull`, ...), the logit difference `' positive' - ' negative'` drops by
#   3.68 (mixtral-tiny) and 4.04 (qwen2moe-tiny). Patching every MoE layer's routing from the
#   corrupted run moves it by +0.013 and +0.106, i.e. slightly the *other* way: the flip reaches the
#   answer almost entirely directly (through the residual stream and the experts' outputs at their
#   clean routing), not through the routers' decisions. What routing effect there is sits in layer 0
#   (+0.019 and +0.091), split over a few experts with opposite signs.
