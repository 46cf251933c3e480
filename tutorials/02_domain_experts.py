# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 2. Domain and general experts across sentiment, MMLU and math
#
# The paper (arXiv 2601.10159) claims that (a) some experts are *domain experts*: a domain routes to
# them often and with confident (low-entropy) router distributions, measured by CWAS; and (b) some
# experts are *general*: every domain uses them. We test both on the three zoo models (two 4-layer
# models with 8 experts, and `olmoe-deep` with 8 layers of 16 fine-grained experts, top-4) with the
# real evaluation sets in `../shared/data` (validation/test splits, which the zoo never trained on).
# Metric definitions are our reconstruction (see the docs' metrics page).
#
# Set `MOELENS_TUTORIAL_SMALL=1` for a quick run (CI does); the full run uses 500 texts per domain.

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

from moelens import HookedMoE, collect_routing_stats
from moelens.analysis.plots import plot_cwas_heatmap, plot_general_vs_domain
from moelens.tasks.data import resolve_data_dir
from moelens.tasks.demo import PAPER_DATASETS, paper_domains

small = os.environ.get("MOELENS_TUTORIAL_SMALL") == "1"
quiet = small or os.environ.get("MOELENS_DOCS_BUILD") == "1"  # no progress bars in the rendered pages
limit = 48 if small else 500
out = Path(os.environ.get("MOELENS_TUTORIAL_OUT", "tutorials/_out")) / "02_domain_experts"
out.mkdir(parents=True, exist_ok=True)

data = paper_domains(limit)  # ../shared/data (or MOELENS_DATA_DIR) if present, else the packaged demo texts
source = resolve_data_dir()
print("data:", f"evaluation sets {PAPER_DATASETS} from {source}" if source else "the packaged demo texts (no ../shared/data found)")
print({domain: len(texts) for domain, texts in data.items()})

# %%
results = {}
for name in ("moelens/mixtral-tiny", "moelens/qwen2moe-tiny", "moelens/olmoe-deep"):
    model = HookedMoE.from_pretrained(name, dtype=torch.float32)
    stats = collect_routing_stats(model, data, batch_size=16, max_length=128, progress=not quiet)
    results[name] = stats
    print(f"\n{name}: {model.cfg.scoring} routing, top-{model.cfg.top_k} of {model.cfg.n_experts}")
    display(stats)  # in a notebook: a summary table and a heatmap of the activation rate
    print(stats.domain_experts(top=3).to_string(index=False))
    print(stats.general_experts(top=4).to_string(index=False))
    tag = name.split("/")[-1]
    display(plot_cwas_heatmap(stats, path=out / f"{tag}-cwas.png"))
    display(plot_general_vs_domain(stats, path=out / f"{tag}-general-vs-domain.png"))

# %% [markdown]
# ## Is routing specialised?
# Claim (a) holds on a model if each domain has an expert whose CWAS lift clearly exceeds the median
# lift, and the CWAS rankings differ between domains.

# %%
from scipy.stats import spearmanr  # noqa: E402

verdicts = {}
for name, stats in results.items():
    lift = stats.cwas_lift().nan_to_num(0)  # [domain moe_layer expert]
    cwas = stats.cwas().nan_to_num(0)
    clear = 0
    for d, domain in enumerate(stats.domains):
        best, median = float(lift[d].max()), float(lift[d].median())
        clear += best > 0 and best > 2 * abs(median)
        print(f"{name} {domain:9s} best lift {best:.3f}  median lift {median:+.3f}")
    rho = spearmanr(cwas[0].flatten(), cwas[-1].flatten()).statistic
    print(f"{name}: Spearman of CWAS rankings, {stats.domains[0]} vs {stats.domains[-1]}: {rho:.2f}")
    general = stats.general_experts(top=1).iloc[0]
    best_layers = {domain: int(lift[d].amax(-1).argmax()) for d, domain in enumerate(stats.domains)}
    verdicts[name] = dict(clear=clear, n_domains=len(stats.domains), rho=rho, general=general,
                          uniform=stats.top_k / stats.n_experts, best_layers=best_layers,
                          n_layers=lift.shape[1])

# %% [markdown]
# ## What our models show
# The verdicts below are computed from this run (a domain "clearly" has a domain expert when its
# best CWAS lift is positive and more than twice the size of its median lift; a general expert is
# one whose lowest activation rate over the domains exceeds the uniform-routing rate top-k / n).
# The figures are also written to `tutorials/_out/02_domain_experts/`.

# %%
for name, v in verdicts.items():
    g = v["general"]
    print(f"{name}:")
    print(f"  claim (a): {v['clear']} of {v['n_domains']} domains have a clear domain expert; CWAS rankings of the "
          f"first and last domain correlate at Spearman {v['rho']:.2f} -> "
          f"{'holds' if v['clear'] == v['n_domains'] else 'holds only in part'}")
    print(f"  claim (b): expert {int(g.expert)} of layer {int(g.layer)} fires on at least {g.min_activation_rate:.0%} of every "
          f"domain's tokens (uniform routing: {v['uniform']:.0%}) -> "
          f"{'holds' if g.min_activation_rate > v['uniform'] else 'not supported'}")
    print(f"  the largest lift of each domain sits in MoE layer (of {v['n_layers']}): {v['best_layers']}")
