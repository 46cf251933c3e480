"""The ``moelens`` command: the whole analysis with a report, or its single steps.

    moelens analyze                      # zoo default model + demo texts -> moelens-report/report.html
    moelens analyze --model allenai/OLMoE-1B-7B-0924 --data sentiment=../shared/data/sst2/validation.jsonl --data mmlu
    moelens stats --out DIR | moelens drivers --out DIR | moelens report DIR

Each step writes its tables and a report section into ``--out``; an interrupted step resumes from its
checkpoint there. Bad input exits with status 2 and one line.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._validate import check_out_dir

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Mechanistic interpretability for Mixture-of-Experts LMs.")

ModelOpt = Annotated[Optional[str], typer.Option("--model", help="hub id, local folder, or zoo name (default: the zoo default)")]
DataOpt = Annotated[
    Optional[list[str]],
    typer.Option("--data", help="DOMAIN=PATH (a JSONL file in the ../shared/data format) or a dataset name (sst2, mmlu, gsm8k, ...); repeatable"),
]
OutOpt = Annotated[Path, typer.Option("--out", help="output folder")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:1, mps ...")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32, bfloat16 or float16")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", min=1, help="at most N texts per domain")]
ExactOpt = Annotated[bool, typer.Option("--exact", help="exact driver sweep instead of the first-order estimate")]


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


def _load_model(model_id: str | None, device: str | None, dtype: str | None):
    import torch

    from .model import HookedMoE
    from .zoo import DEFAULT_MODEL

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one progress bar per analysis step is enough
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        raise _Fail(f"--dtype {dtype!r} is not one of float32, bfloat16, float16")
    from ._validate import check_model_name

    check_model_name(model_id)
    name = model_id or DEFAULT_MODEL
    model = HookedMoE.from_pretrained(name, device=device, dtype=dtypes[dtype])
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
    from .report import figure_html, table_html, write_section

    stats = collect_routing_stats(model, data, batch_size=16, max_length=256, progress=progress, checkpoint=out / "checkpoints" / "stats")
    stats.save(out / "routing_stats")
    stats.to_frame().to_csv(out / "routing_stats.csv", index=False)
    domain_experts = stats.domain_experts(top=10)
    general = stats.general_experts(top=10)
    domain_experts.to_csv(out / "domain_experts.csv", index=False)
    general.to_csv(out / "general_experts.csv", index=False)
    write_section(
        out, 20, "Domain experts",
        "<p class='note'>CWAS = activation rate x (1 - normalised routing entropy); domain experts rank by CWAS lift "
        "(CWAS in the domain minus its mean over the other domains). Our reconstruction of arXiv 2601.10159.</p>"
        + figure_html(plot_cwas_heatmap(stats), "CWAS heatmaps") + figure_html(plot_cwas_heatmap(stats, metric="lift"), "CWAS lift")
        + table_html(domain_experts),
    )
    write_section(
        out, 30, "General experts",
        "<p class='note'>High activation rate in every domain, low domain specificity.</p>"
        + figure_html(plot_general_vs_domain(stats), "general vs domain") + table_html(general),
    )
    _token_view(model, data, out)
    return stats


def _token_view(model, data: dict[str, list[str]], out: Path) -> None:
    import torch

    from .report import tokens_html, write_section

    layer = model.cfg.moe_layers[len(model.cfg.moe_layers) // 2]
    name = f"blocks.{layer}.moe.hook_topk_indices"
    parts = [f"<p class='note'>Tokens coloured by their top-1 expert at MoE layer {layer}; hover for all selected experts.</p>"]
    for domain, texts in data.items():
        for text in texts[:2]:
            with torch.inference_mode():
                _, cache = model.run_with_cache(text, names_filter=name)
            ids = model.to_tokens(text)[0][0]
            tokens = [model.tokenizer.decode([int(t)]) for t in ids]
            parts.append(f"<h3>{domain}</h3>" + tokens_html(tokens, cache[name][0].tolist(), f"layer {layer}"))
    write_section(out, 60, "Tokens by expert", "\n".join(parts))


def run_drivers(model, data: dict[str, list[str]], out: Path, exact: bool, progress: bool = True, per_domain: int = 8):
    """Driver-expert step: effects, plots, report section; agreement with CWAS when stats exist."""
    from .analysis.drivers import driver_effects
    from .report import figure_html, table_html, write_section

    texts = [text for domain_texts in data.values() for text in domain_texts[:per_domain]]
    method = "exact" if exact else "first_order"
    effects = driver_effects(model, texts, method=method, progress=progress, checkpoint=out / "checkpoints" / f"drivers-{method}")
    effects.save(out / "driver_effects")
    effects.to_frame().to_csv(out / "driver_effects.csv", index=False)
    top = effects.top(10)
    body = (
        f"<p class='note'>Effect of (layer, expert) = mean KL(P || Q) at the last token when the expert's router logit "
        f"is perturbed ({method.replace('_', '-')}; {len(texts)} texts).</p>"
        + figure_html(effects.plot_heatmap(), "driver heatmap") + figure_html(effects.plot_layer_totals(), "driver totals by layer")
        + table_html(top)
    )
    write_section(out, 40, "Driver experts", body)
    if (out / "routing_stats.safetensors").exists():
        _agreement_section(out, effects)
    return effects


def _agreement_section(out: Path, effects) -> None:
    from scipy.stats import spearmanr

    from .analysis import RoutingStats
    from .report import write_section

    stats = RoutingStats.load(out / "routing_stats")
    lift = stats.cwas_lift().nan_to_num(0).amax(0).reshape(-1).numpy()  # best lift over domains [moe_layer*expert]
    drive = effects.effect.reshape(-1).numpy()
    rho = spearmanr(lift, drive).statistic
    n = min(10, len(drive))
    overlap = len(set(lift.argsort()[-n:]) & set(drive.argsort()[-n:]))
    write_section(
        out, 50, "Domain experts vs driver experts",
        f"<p>Spearman correlation between the best CWAS lift of each (layer, expert) and its driver effect: "
        f"<b>{rho:.3f}</b>; overlap of the top-{n} sets: <b>{overlap}/{n}</b>. The paper's claim is that "
        f"the experts a domain activates most are not always the ones that drive the output.</p>",
    )


def _summary(out: Path, name: str, model, data: dict[str, list[str]], seconds: dict[str, float]) -> None:
    from .report import write_section

    cfg = model.cfg
    rows = "".join(f"<tr><td>{d}</td><td>{len(t)}</td></tr>" for d, t in data.items())
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
    write_section(
        out, 10, "Summary",
        f"<p><b>{name}</b>: {cfg.architecture}, {cfg.n_layers} layers (MoE layers {list(cfg.moe_layers)}), "
        f"{cfg.n_experts} experts, top-{cfg.top_k}, {cfg.scoring} routing.</p>"
        f"<table><tr><th>domain</th><th>texts</th></tr>{rows}</table><p class='note'>Timings: {timing}.</p>",
    )
    _write_json(out / "run.json", {"model": name, "cfg": cfg.__dict__, "domains": {d: len(t) for d, t in data.items()}, "seconds": seconds})


@app.command()
@_guard
def analyze(
    model: ModelOpt = None, data: DataOpt = None, out: OutOpt = Path("moelens-report"), device: DeviceOpt = None,
    dtype: DtypeOpt = "float32", limit: LimitOpt = None, exact: ExactOpt = False,
) -> None:
    """Routing statistics, domain and general experts, driver experts, and an HTML report."""
    from .report import assemble

    check_out_dir(out)
    name, hooked = _load_model(model, device, dtype)
    texts = _load_data(data, limit)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    run_stats(hooked, texts, out)
    seconds["routing stats"] = time.perf_counter() - start
    start = time.perf_counter()
    run_drivers(hooked, texts, out, exact)
    seconds["driver effects"] = time.perf_counter() - start
    _summary(out, name, hooked, texts, seconds)
    typer.echo(f"report: {assemble(out)}")


@app.command()
@_guard
def stats(model: ModelOpt = None, data: DataOpt = None, out: OutOpt = Path("moelens-report"), device: DeviceOpt = None,
          dtype: DtypeOpt = "float32", limit: LimitOpt = None) -> None:
    """Routing statistics only (domain and general experts)."""
    check_out_dir(out)
    _, hooked = _load_model(model, device, dtype)
    run_stats(hooked, _load_data(data, limit), out)
    typer.echo(f"tables and sections written to {out}; `moelens report {out}` builds the report")


@app.command()
@_guard
def drivers(model: ModelOpt = None, data: DataOpt = None, out: OutOpt = Path("moelens-report"), device: DeviceOpt = None,
            dtype: DtypeOpt = "float32", limit: LimitOpt = None, exact: ExactOpt = False) -> None:
    """Driver experts only."""
    check_out_dir(out)
    _, hooked = _load_model(model, device, dtype)
    run_drivers(hooked, _load_data(data, limit), out, exact)
    typer.echo(f"tables and sections written to {out}; `moelens report {out}` builds the report")


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
