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

import time
from pathlib import Path
from typing import Annotated

import typer

from ._cli_base import Command, OneLineErrors, print_version
from ._cli_steps import run_drivers, run_stats, summary
from ._validate import check_out_dir

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Mechanistic interpretability for Mixture-of-Experts LMs.",
                  context_settings={"help_option_names": ["-h", "--help"]}, cls=OneLineErrors)

ModelOpt = Annotated[str | None, typer.Option("--model", metavar="NAME", help="hub id, local folder, or zoo name (default: the zoo default)")]
DataOpt = Annotated[
    list[str] | None,
    typer.Option("--data", metavar="DOMAIN=PATH", help="DOMAIN=PATH (a JSONL file in the ../shared/data format, or a folder "
                 "holding one) or a dataset name (sst2, mmlu, gsm8k, ...); repeatable"),
]
OutOpt = Annotated[Path, typer.Option("--out", metavar="FOLDER", help="output folder (see `moelens report -h` on reusing one)")]
DeviceOpt = Annotated[str | None, typer.Option("--device", metavar="DEVICE", help="cpu, cuda, cuda:1, mps ...")]
DtypeOpt = Annotated[str, typer.Option("--dtype", metavar="DTYPE", help="float32, bfloat16, float16, or auto (the checkpoint's "
                                       "dtype: the default of HookedMoE.from_pretrained in Python)")]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, metavar="N", help="at most N texts per domain")]
ExactOpt = Annotated[bool, typer.Option("--exact", metavar="", help="exact driver sweep instead of the first-order estimate")]
BackendOpt = Annotated[
    str,
    typer.Option("--backend", metavar="BACKEND",
                 help="hooked (HookedMoE, default), nnsight (NNsightMoE, local) or ndif (NNsightMoE, remote on NDIF)"),
]
StudyOpt = Annotated[str | None, typer.Option("--study", metavar="TASK", help="also run the re-weighting study on this task (sst2, mmlu, ...)")]


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", "-V", metavar="", callback=print_version, is_eager=True, help="print the version and exit")] = False,
) -> None:
    """Mechanistic interpretability for Mixture-of-Experts LMs. Bad input exits with status 2 and one line."""


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
        except (_Fail, MoelensError, FileNotFoundError, ValueError, ImportError, UnicodeError) as error:
            typer.echo(f"moelens: error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", err=True)
            raise typer.Exit(2) from None

    return wrapper


_BACKENDS = ("hooked", "nnsight", "ndif")


def _check_model_args(model_id: str | None, device: str | None, dtype: str | None, backend: str = "hooked") -> None:
    """Every model argument, before the data is read and the model loads."""
    from ._validate import check_device, check_model_name

    if dtype not in _DTYPES:
        raise _Fail(f"--dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    check_model_name(model_id)
    check_device(device, "--device")
    if backend not in _BACKENDS:
        raise _Fail(f"--backend {backend!r} is not one of {', '.join(_BACKENDS)}")


_DTYPES = ("float32", "bfloat16", "float16", "auto")


def _load_model(model_id: str | None, device: str | None, dtype: str | None, backend: str = "hooked"):
    import torch
    from transformers.utils import logging as hf_logging

    from .model import HookedMoE
    from .zoo import DEFAULT_MODEL

    hf_logging.disable_progress_bar()  # one progress bar per analysis step is enough
    _check_model_args(model_id, device, dtype, backend)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": None}
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


def _claim(out: Path, steps: tuple[str, ...], name: str, dtype: str, texts: dict[str, list[str]]) -> None:
    """The folder rule (moelens._outdir): outputs of other model or data are removed, and said so."""
    from ._outdir import claim

    removed = sorted({stale for step in steps for stale in claim(out, step, f"{name}|{dtype}", texts)})
    if removed:
        typer.echo(f"note: removed the {', '.join(removed)} outputs in {out}: they were made from another model or data "
                   "(rerun those steps to add them back)", err=True)


@app.command(cls=Command)
@_guard
def analyze(
    model: ModelOpt = None, data: DataOpt = None, out: OutOpt = Path("moelens-report"), device: DeviceOpt = None,
    dtype: DtypeOpt = "float32", limit: LimitOpt = None, exact: ExactOpt = False, study: StudyOpt = None,
    backend: BackendOpt = "hooked",
) -> None:
    """Routing statistics, domain and general experts, driver experts, and an HTML report."""
    from .report import assemble

    check_out_dir(out)
    _check_model_args(model, device, dtype, backend)
    if backend != "hooked" and not exact:
        raise _Fail(f"--backend {backend} runs the exact driver sweep only (the estimates need gradients through HookedMoE); add --exact")
    if study:
        from .tasks.registry import get_task

        get_task(study)
    texts = _load_data(data, limit)  # every file checked before the model loads
    name, hooked = _load_model(model, device, dtype, backend)
    _claim(out, ("stats", "drivers", "summary"), name, dtype, texts)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    stats_result = run_stats(hooked, texts, out)
    seconds["routing stats"] = time.perf_counter() - start
    start = time.perf_counter()
    effects = run_drivers(hooked, texts, out, exact)
    seconds["driver effects"] = time.perf_counter() - start
    start = time.perf_counter()
    from .analysis.mediation.report import write_sections

    write_sections(hooked, texts, out, effects)  # token triggers of the drivers, a mediation example
    seconds["triggers and mediation"] = time.perf_counter() - start
    if study:
        from .tasks import reweighting_study, write_study

        start = time.perf_counter()
        write_study(out, reweighting_study(hooked, study, limit=limit, driver_method="exact" if exact else "first_order",
                                           checkpoint=out / "checkpoints" / "study"))
        seconds["re-weighting study"] = time.perf_counter() - start
    summary(out, name, hooked, texts, seconds, stats_result, effects)
    typer.echo(f"report: {assemble(out)}")


@app.command(cls=Command)
@_guard
def stats(model: ModelOpt = None, data: DataOpt = None, out: OutOpt = Path("moelens-report"), device: DeviceOpt = None,
          dtype: DtypeOpt = "float32", limit: LimitOpt = None, backend: BackendOpt = "hooked") -> None:
    """Routing statistics only (domain and general experts)."""
    check_out_dir(out)
    _check_model_args(model, device, dtype, backend)
    texts = _load_data(data, limit)
    name, hooked = _load_model(model, device, dtype, backend)
    _claim(out, ("stats",), name, dtype, texts)
    run_stats(hooked, texts, out)
    typer.echo(f"tables and sections written to {out}; `moelens report {out}` builds the report")


@app.command(cls=Command)
@_guard
def drivers(model: ModelOpt = None, data: DataOpt = None, out: OutOpt = Path("moelens-report"), device: DeviceOpt = None,
            dtype: DtypeOpt = "float32", limit: LimitOpt = None, exact: ExactOpt = False, backend: BackendOpt = "hooked") -> None:
    """Driver experts only."""
    check_out_dir(out)
    if backend != "hooked" and not exact:
        raise _Fail(f"--backend {backend} runs the exact driver sweep only (the estimates need gradients through HookedMoE); add --exact")
    _check_model_args(model, device, dtype, backend)
    texts = _load_data(data, limit)
    name, hooked = _load_model(model, device, dtype, backend)
    _claim(out, ("drivers",), name, dtype, texts)
    run_drivers(hooked, texts, out, exact)
    typer.echo(f"tables and sections written to {out}; `moelens report {out}` builds the report")


@app.command(name="study", cls=Command)
@_guard
def study_command(
    model: ModelOpt = None, task: Annotated[str, typer.Option("--task", metavar="TASK", help="sst2, sst5, yelp, mmlu, gsm8k, ...")] = "sst2",
    out: OutOpt = Path("moelens-study"),
    select_on: Annotated[str | None, typer.Option("--select-on", metavar="SPLIT|PATH", help="split name (train, validation[:200]) or JSONL path")] = None,
    evaluate_on: Annotated[str | None, typer.Option("--evaluate-on", metavar="SPLIT|PATH", help="split name or JSONL path")] = None,
    confirm_on: Annotated[str | None, typer.Option("--confirm-on", metavar="SPLIT|PATH", help="third split, looked at once: confirmatory rows")] = None,
    correction: Annotated[str, typer.Option("--correction", metavar="METHOD", help="holm | bh | none (multiplicity, per stage)")] = "holm",
    factor: Annotated[list[float] | None, typer.Option("--factor", metavar="FACTOR", help="repeatable; default 0.8 and 1.2")] = None,
    recipe: Annotated[list[str] | None, typer.Option("--recipe", metavar="RECIPE", help="scale-logits | scale-weights | perturb; repeatable")] = None,
    n_experts: Annotated[int, typer.Option("--n-experts", metavar="N")] = 4, n_random: Annotated[int, typer.Option("--n-random", metavar="N")] = 3,
    select_limit: Annotated[int, typer.Option("--select-limit", metavar="N")] = 256, limit: LimitOpt = None,
    tune_steps: Annotated[int, typer.Option("--tune-steps", metavar="N", help="router LoRA steps for the 'tune the router' row (0: none)")] = 0,
    exact: Annotated[bool, typer.Option("--exact/--first-order", metavar="", help="driver selection method")] = True,
    device: DeviceOpt = None, dtype: DtypeOpt = "float32", seed: Annotated[int, typer.Option("--seed", metavar="N")] = 0,
    backend: BackendOpt = "hooked",
) -> None:
    """Re-weighting study: domain/driver experts up and down vs random experts; table, plot and report section."""
    from ._validate import check_study_args
    from .tasks import reweighting_study, write_study

    check_out_dir(out)  # before the study, not after it
    _check_model_args(model, device, dtype, backend)
    check_study_args(task, select_on, evaluate_on, factor, recipe, n_experts=n_experts, n_random=n_random, select_limit=select_limit,
                     limit=limit, tune_steps=tune_steps, seed=seed)
    name, hooked = _load_model(model, device, dtype, backend)
    result = reweighting_study(hooked, task, select_on, evaluate_on, tuple(factor or (0.8, 1.2)), n_experts=n_experts, n_random=n_random,
                               recipes=recipe, select_limit=select_limit, limit=limit, tune_steps=tune_steps, seed=seed,
                               driver_method="exact" if exact else "first_order", model_name=name, confirm_on=confirm_on,
                               correction=correction, checkpoint=out / "checkpoints" / "study")
    typer.echo(result.table.drop(columns=["model", "task"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    typer.echo(f"table: {write_study(out, result)}")


@app.command(cls=Command)
@_guard
def report(out: Annotated[Path, typer.Argument(metavar="FOLDER", help="folder written by analyze/stats/drivers")] = Path("moelens-report")) -> None:
    """Assemble the HTML report from the sections in a folder.

    A folder holds the outputs of one model and one data set: a step run into it with another model or
    other data removes the other steps' tables and sections (and says so), so the report never mixes them.
    """
    from .report import assemble

    if not out.is_dir():
        raise _Fail(f"{out} is not a folder; run `moelens analyze --out {out}` first")
    typer.echo(f"report: {assemble(out)}")


if __name__ == "__main__":
    app()
