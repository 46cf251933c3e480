"""The ``moelens`` command: the whole analysis with a report, or its single steps.

    moelens analyze                      # zoo default model + demo texts -> moelens-report/report.html
    moelens analyze --model allenai/OLMoE-1B-7B-0924 --data sentiment=../shared/data/sst2/validation.jsonl --data mmlu
    moelens stats --out DIR | moelens drivers --out DIR | moelens report DIR
    moelens stats --backend nnsight | moelens drivers --exact --backend ndif   # through nnsight, local or remote
    moelens study --task sst2 --select-on train --evaluate-on validation --recipe scale-logits --recipe perturb

Each step writes its tables and a report section into ``--out``; an interrupted step resumes from its
checkpoint there. Bad input exits with status 2 and one line.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from ._validate import check_out_dir

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Mechanistic interpretability for Mixture-of-Experts LMs.")

ModelOpt = Annotated[str | None, typer.Option("--model", help="hub id, local folder, or zoo name (default: the zoo default)")]
DataOpt = Annotated[
    list[str] | None,
    typer.Option("--data", help="DOMAIN=PATH (a JSONL file in the ../shared/data format) or a dataset name (sst2, mmlu, gsm8k, ...); repeatable"),
]
OutOpt = Annotated[Path, typer.Option("--out", help="output folder")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1, mps ...")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32, bfloat16 or float16")]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="at most N texts per domain")]
ExactOpt = Annotated[bool, typer.Option("--exact", help="exact driver sweep instead of the first-order estimate")]
BackendOpt = Annotated[
    str,
    typer.Option("--backend", help="hooked (HookedMoE, default), nnsight (NNsightMoE, local) or ndif (NNsightMoE, remote on NDIF)"),
]
StudyOpt = Annotated[str | None, typer.Option("--study", help="also run the re-weighting study on this task (sst2, mmlu, ...)")]


class _Fail(Exception):
    """A user error: printed as one line, exit status 2."""


def _guard(fn):
    """Turn expected errors into one clear line and exit status 2 (no traceback)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .errors import MoelensError

        try:
            return fn(*args, **kwargs)
        except (_Fail, MoelensError, FileNotFoundError, ValueError, ImportError) as error:
            typer.echo(f"moelens: error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", err=True)
            raise typer.Exit(2) from None

    return wrapper


_BACKENDS = ("hooked", "nnsight", "ndif")


def _load_model(model_id: str | None, device: str | None, dtype: str | None, backend: str = "hooked"):
    import torch
    from transformers.utils import logging as hf_logging

    from .model import HookedMoE
    from .zoo import DEFAULT_MODEL

    hf_logging.disable_progress_bar()  # one progress bar per analysis step is enough
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        raise _Fail(f"--dtype {dtype!r} is not one of float32, bfloat16, float16")
    from ._validate import check_device, check_model_name

    check_model_name(model_id)
    check_device(device, "--device")
    if backend not in _BACKENDS:
        raise _Fail(f"--backend {backend!r} is not one of {', '.join(_BACKENDS)}")
    name = model_id or DEFAULT_MODEL
    if backend == "hooked":
        model = HookedMoE.from_pretrained(name, device=device, dtype=dtypes[dtype])
    else:  # the analyses take either backend (moelens.backends.protocol)
        from .backends.nnsight import NNsightMoE

        placement = {"device_map": device} if device is not None and backend == "nnsight" else {}
        model = NNsightMoE.from_pretrained(name, remote=backend == "ndif", dtype=dtypes[dtype], **placement)
    if model.tokenizer is None:
        raise _Fail(f"{name!r} has no tokenizer; the CLI needs one to read texts")
    return name, model


def _load_data(specs: list[str] | None, limit: int | None) -> dict[str, list[str]]:
    from ._validate import check_data_specs, checked_domain_texts
    from .tasks.demo import demo_texts

    check_data_specs(specs)
    if not specs:
        return demo_texts(limit)
    data: dict[str, list[str]] = {}
    for spec in specs:
        domain, _, source = spec.partition("=") if "=" in spec else (spec, "", spec)
        if not domain or not source:
            raise _Fail(f"--data {spec!r}: write DOMAIN=PATH (e.g. sentiment=data/sst2.jsonl) or a dataset name (e.g. sst2)")
        if "=" in spec and not Path(source).exists() and "/" in source:
            raise _Fail(f"--data {spec!r}: {source} does not exist")
        texts = checked_domain_texts(spec, source, limit)
        if not texts:
            raise _Fail(f"--data {spec!r}: no texts found")
        data[domain] = list(texts)
    return data


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


def run_stats(model, data: dict[str, list[str]], out: Path, progress: bool = True):
    """Routing statistics step: tables, plots and report sections."""
    from .analysis import collect_routing_stats
    from .analysis.plots import plot_cwas_heatmap, plot_general_vs_domain
    from .report import el, figure_html, table_html, write_section
    from .viz.findings import (
        as_sentence,
        domain_expert_sentences,
        general_expert_sentence,
    )

    stats = collect_routing_stats(model, data, batch_size=16, max_length=256, progress=progress, checkpoint=out / "checkpoints" / "stats")
    stats.save(out / "routing_stats")
    stats.to_frame().to_csv(out / "routing_stats.csv", index=False)
    domain_experts = stats.domain_experts(top=10)
    general = stats.general_experts(top=10)
    domain_experts.to_csv(out / "domain_experts.csv", index=False)
    general.to_csv(out / "general_experts.csv", index=False)
    write_section(
        out, "Domain experts",
        el("p", "CWAS = A × (1 − H): activation rate A times one minus the normalised routing entropy H. Domain experts "
                "rank by CWAS lift (CWAS in the domain minus its mean over the other domains). Our reconstruction of "
                "arXiv 2601.10159.", cls="note")
        + el("ul", *[el("li", as_sentence(sentence)) for sentence in domain_expert_sentences(stats)])
        + figure_html(plot_cwas_heatmap(stats), "CWAS heatmaps") + figure_html(plot_cwas_heatmap(stats, metric="lift"), "CWAS lift")
        + table_html(domain_experts, caption="Top 10 experts of each domain by CWAS lift (click a header to sort)"),
    )
    write_section(
        out, "General experts",
        el("p", "High activation rate in every domain, low domain specificity: ", general_expert_sentence(stats), ".")
        + figure_html(plot_general_vs_domain(stats), "general vs domain")
        + table_html(general, caption="Experts ranked by their lowest activation rate over the domains"),
    )
    _token_view(model, data, out)
    return stats


def _token_view(model, data: dict[str, list[str]], out: Path, per_domain: int = 1) -> None:
    from .report import el, write_section
    from .viz import routing_tokens

    parts = [el("p", "Each text's tokens coloured by the gate weight of one expert (choose the MoE layer and the expert "
                     "above the text; zero where the token did not go to that expert). Interactive circuitsvis views, "
                     "rendered offline from the bundle inlined once in this page.", cls="note")]
    for domain, texts in data.items():
        for text in texts[:per_domain]:
            parts += [el("h3", domain), routing_tokens(model, text).fragment()]
    write_section(out, "Tokens by expert", "\n".join(parts))


def run_drivers(model, data: dict[str, list[str]], out: Path, exact: bool, progress: bool = True, per_domain: int = 8):
    """Driver-expert step: effects, plots, report section; agreement with CWAS when stats exist."""
    from .analysis.drivers import driver_effects
    from .report import el, figure_html, table_html, write_section
    from .viz.findings import as_sentence, driver_sentence

    texts = [text for domain_texts in data.values() for text in domain_texts[:per_domain]]
    method = "exact" if exact else "first_order"
    effects = driver_effects(model, texts, method=method, progress=progress, checkpoint=out / "checkpoints" / f"drivers-{method}",
                             per_input=True)  # per-input effects: robust per-layer shares in the report
    effects.save(out / "driver_effects")
    effects.to_frame().to_csv(out / "driver_effects.csv", index=False)
    top = effects.top(10)
    body = (
        el("p", f"Effect of (layer, expert) = mean KL(P ‖ Q) at the last token when the expert's router logit is perturbed "
                f"({method.replace('_', '-')}; {len(texts)} texts).", cls="note")
        + el("p", as_sentence(driver_sentence(effects)))
        + figure_html(effects.plot_heatmap(), "driver heatmap") + figure_html(effects.plot_layer_totals(), "driver totals by layer")
        + table_html(top, caption="The 10 strongest drivers (mean KL in nats)")
    )
    write_section(out, "Driver experts", body)
    if (out / "routing_stats.safetensors").exists():
        _agreement_section(out, effects)
    return effects


def _agreement(stats, effects) -> tuple[float, int, int]:
    """Spearman of best CWAS lift vs driver effect over (layer, expert), and the top-n overlap."""
    from scipy.stats import spearmanr

    lift = stats.cwas_lift().nan_to_num(0).amax(0).reshape(-1).numpy()  # best lift over domains [moe_layer*expert]
    drive = effects.effect.reshape(-1).numpy()
    n = min(10, len(drive))
    overlap = len(set(lift.argsort()[-n:]) & set(drive.argsort()[-n:]))
    return float(spearmanr(lift, drive).statistic), overlap, n


def _agreement_section(out: Path, effects) -> None:
    from .analysis import RoutingStats
    from .report import el, write_section
    from .viz.findings import agreement_sentence, as_sentence

    rho, overlap, n = _agreement(RoutingStats.load(out / "routing_stats"), effects)
    write_section(
        out, "Domain experts vs driver experts",
        el("p", as_sentence(agreement_sentence(rho, overlap, n)), " The paper's claim is that the experts a domain "
                "activates most are not always the ones that drive the output."),
    )


def _summary(out: Path, name: str, model, data: dict[str, list[str]], seconds: dict[str, float], stats=None, effects=None) -> None:
    import pandas as pd

    from .report import el, table_html, write_section
    from .viz.findings import (
        agreement_sentence,
        as_sentence,
        domain_expert_sentences,
        driver_sentence,
        general_expert_sentence,
    )

    cfg = model.cfg
    findings = []
    if stats is not None:
        findings += domain_expert_sentences(stats) + [general_expert_sentence(stats)]
    if effects is not None:
        findings.append(driver_sentence(effects))
    if stats is not None and effects is not None:
        findings.append(agreement_sentence(*_agreement(stats, effects)))
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
    write_section(
        out, "Summary",
        el("p", el("b", name), f": {cfg.architecture}, {cfg.n_layers} layers (MoE layers {list(cfg.moe_layers)}), "
                               f"{cfg.n_experts} experts, top-{cfg.top_k}, {cfg.scoring} routing.")
        + (el("p", "What we found:") + el("ul", *[el("li", as_sentence(f)) for f in findings]) if findings else "")
        + table_html(pd.DataFrame({"domain": list(data), "texts": [len(t) for t in data.values()]}), caption="Data")
        + el("p", f"Timings: {timing}.", cls="note"),
    )
    _write_json(out / "run.json", {"model": name, "cfg": cfg.__dict__, "domains": {d: len(t) for d, t in data.items()}, "seconds": seconds})


@app.command()
@_guard
def analyze(
    model: ModelOpt = None, data: DataOpt = None, out: OutOpt = Path("moelens-report"), device: DeviceOpt = None,
    dtype: DtypeOpt = "float32", limit: LimitOpt = None, exact: ExactOpt = False, study: StudyOpt = None,
) -> None:
    """Routing statistics, domain and general experts, driver experts, and an HTML report."""
    from .report import assemble

    check_out_dir(out)
    name, hooked = _load_model(model, device, dtype)
    texts = _load_data(data, limit)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    stats_result = run_stats(hooked, texts, out)
    seconds["routing stats"] = time.perf_counter() - start
    start = time.perf_counter()
    effects = run_drivers(hooked, texts, out, exact)
    seconds["driver effects"] = time.perf_counter() - start
    start = time.perf_counter()
    from .analysis.mediation_report import write_sections

    write_sections(hooked, texts, out, effects)  # token triggers of the drivers, a mediation example
    seconds["triggers and mediation"] = time.perf_counter() - start
    if study:
        from .tasks import reweighting_study, write_study

        start = time.perf_counter()
        write_study(out, reweighting_study(hooked, study, limit=limit, driver_method="exact" if exact else "first_order"))
        seconds["re-weighting study"] = time.perf_counter() - start
    _summary(out, name, hooked, texts, seconds, stats_result, effects)
    typer.echo(f"report: {assemble(out)}")


@app.command()
@_guard
def stats(model: ModelOpt = None, data: DataOpt = None, out: OutOpt = Path("moelens-report"), device: DeviceOpt = None,
          dtype: DtypeOpt = "float32", limit: LimitOpt = None, backend: BackendOpt = "hooked") -> None:
    """Routing statistics only (domain and general experts)."""
    check_out_dir(out)
    _, hooked = _load_model(model, device, dtype, backend)
    run_stats(hooked, _load_data(data, limit), out)
    typer.echo(f"tables and sections written to {out}; `moelens report {out}` builds the report")


@app.command()
@_guard
def drivers(model: ModelOpt = None, data: DataOpt = None, out: OutOpt = Path("moelens-report"), device: DeviceOpt = None,
            dtype: DtypeOpt = "float32", limit: LimitOpt = None, exact: ExactOpt = False, backend: BackendOpt = "hooked") -> None:
    """Driver experts only."""
    check_out_dir(out)
    if backend != "hooked" and not exact:
        raise _Fail(f"--backend {backend} runs the exact driver sweep only (the estimates need gradients through HookedMoE); add --exact")
    _, hooked = _load_model(model, device, dtype, backend)
    run_drivers(hooked, _load_data(data, limit), out, exact)
    typer.echo(f"tables and sections written to {out}; `moelens report {out}` builds the report")


@app.command(name="study")
@_guard
def study_command(
    model: ModelOpt = None, task: Annotated[str, typer.Option("--task")] = "sst2", out: OutOpt = Path("moelens-study"),
    select_on: Annotated[str | None, typer.Option("--select-on", help="split name (train, validation[:200]) or JSONL path")] = None,
    evaluate_on: Annotated[str | None, typer.Option("--evaluate-on", help="split name or JSONL path")] = None,
    factor: Annotated[list[float] | None, typer.Option("--factor", help="repeatable; default 0.8 and 1.2")] = None,
    recipe: Annotated[list[str] | None, typer.Option("--recipe", help="scale-logits | scale-weights | perturb; repeatable")] = None,
    n_experts: Annotated[int, typer.Option("--n-experts")] = 4, n_random: Annotated[int, typer.Option("--n-random")] = 3,
    select_limit: Annotated[int, typer.Option("--select-limit")] = 256, limit: LimitOpt = None,
    tune_steps: Annotated[int, typer.Option("--tune-steps", help="router LoRA steps for the 'tune the router' row (0: none)")] = 0,
    exact: Annotated[bool, typer.Option("--exact/--first-order", help="driver selection method")] = True,
    device: DeviceOpt = None, dtype: DtypeOpt = "float32", seed: Annotated[int, typer.Option("--seed")] = 0,
    backend: BackendOpt = "hooked",
) -> None:
    """Re-weighting study: domain/driver experts up and down vs random experts; table, plot and report section."""
    from .tasks import reweighting_study, write_study

    name, hooked = _load_model(model, device, dtype, backend)
    result = reweighting_study(hooked, task, select_on, evaluate_on, tuple(factor or (0.8, 1.2)), n_experts=n_experts, n_random=n_random,
                               recipes=recipe, select_limit=select_limit, limit=limit, tune_steps=tune_steps, seed=seed,
                               driver_method="exact" if exact else "first_order", model_name=name)
    typer.echo(result.table.drop(columns=["model", "task"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    typer.echo(f"table: {write_study(out, result)}")


@app.command()
@_guard
def report(out: Annotated[Path, typer.Argument(help="folder written by analyze/stats/drivers")] = Path("moelens-report")) -> None:
    """Assemble the HTML report from the sections in a folder."""
    from .report import assemble

    if not out.is_dir():
        raise _Fail(f"{out} is not a folder; run `moelens analyze --out {out}` first")
    typer.echo(f"report: {assemble(out)}")


if __name__ == "__main__":
    app()
