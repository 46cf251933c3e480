"""MkDocs hook that generates the documentation that is data, so that it cannot go stale.

- one page per registered architecture spec (``moelens.architectures.SPECS``);
- one page per error class of ``moelens.errors.__all__`` that has no hand-written page, and the
  generated header of those that have one (``docs/errors/<ClassName>.md``);
- one page per packaged zoo model card (``moelens/zoo/*/README.md``);
- the tables in hand-written pages, where they hold a marker ``<!-- moelens:NAME [ARG] -->``.

MkDocs runs it through ``hooks:`` in mkdocs.yml: ``on_config`` completes the nav, ``on_files`` adds
the generated pages (in memory: nothing is written to docs/), ``on_page_markdown`` fills the
markers. ``python docs/gen_pages.py OUT_DIR`` writes the generated pages to a folder to inspect them.
The pure functions (:func:`generated_pages`, :func:`fill_markers`) are what tests/unit/test_docs.py
checks.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
if str(ROOT) not in sys.path:  # the build must document this checkout, installed or not
    sys.path.insert(0, str(ROOT))

import moelens.architectures as architectures  # noqa: E402
from moelens import errors  # noqa: E402
from moelens.architectures.spec import ArchitectureSpec  # noqa: E402
from moelens.names import HOOK_TABLE, hook_name  # noqa: E402

MARKER = re.compile(r"<!-- moelens:([\w-]+)(?: ([\w.-]+))? -->")

SCOPES = {
    "model": "once per model",
    "layer": "every layer",
    "moe": "every MoE layer",
    "shared": "MoE layers with shared experts",
}

ROUTER_IO = {
    "(logits, weights, index)": (
        "The router returns `(router_logits [tokens n_experts], top_k_weights [tokens k], "
        "top_k_index [tokens k])` (the transformers v5 convention), flattened over tokens. moelens "
        "reads the three tensors as they are, and an edit writes a tuple of the same form back."
    ),
    "(index, weights, aux_loss)": (
        "The router (remote-code `MoEGate`) returns `(topk_idx [tokens k], topk_weight [tokens k], "
        "aux_loss)` and never the logits. moelens recomputes the logits from the router's input and "
        "weight, exactly as the router does internally, so that `hook_router_logits` can be read and "
        "edited; an edit writes `(index, weights, aux_loss)` back."
    ),
}


# -- data helpers ---------------------------------------------------------------------------------


def specs() -> tuple[ArchitectureSpec, ...]:
    return architectures.SPECS


def arch_page(spec: ArchitectureSpec) -> str:
    """Docs path of a spec's page."""
    return f"architectures/{spec.name}.md"


def error_classes() -> list[type]:
    return [getattr(errors, name) for name in errors.__all__]


def error_page(cls: type) -> str:
    return f"errors/{cls.__name__}.md"


def zoo_cards() -> dict[str, Path]:
    """Packaged model cards, ``{name: README path}``, sorted by name."""
    zoo = ROOT / "moelens" / "zoo"
    return {p.parent.name: p for p in sorted(zoo.glob("*/README.md"))}


def _spec_constant(spec: ArchitectureSpec) -> str:
    """``moelens.architectures.mixtral.MIXTRAL``: where a spec is defined."""
    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", "") or ""
        if not name.startswith("moelens.architectures.") or name.endswith(".registry"):
            continue
        for attr, value in vars(module).items():
            if value is spec and attr.isupper():
                return f"{name}.{attr}"
    return f"moelens.architectures.{spec.name}"


def _shared_count(spec: ArchitectureSpec) -> str:
    """The source of ``shared_expert_count`` (a lambda of the config), e.g. ``config.n_shared_experts``."""
    if spec.shared_experts is None:
        return "0"
    try:
        source = inspect.getsource(spec.shared_expert_count)
    except (OSError, TypeError):
        return "read from the config"
    match = re.search(r"lambda\s+config\s*:\s*(.+?),?\s*\)?\s*$", source.strip())
    return f"`{match.group(1)}`" if match else "read from the config"


def offered_hooks(spec: ArchitectureSpec) -> list[str]:
    """Hook suffixes a model of this family offers (every layer and MoE layer), in table order.

    Mirrors ``HookedMoE._build_moe_points``; tests/unit/test_docs.py checks it against real models.
    """
    offered = []
    for suffix, row in HOOK_TABLE.items():
        if row.scope == "shared" and spec.shared_experts is None:
            continue
        if suffix == "hook_expert_out" and spec.experts_layout != "fused":
            continue
        offered.append(suffix)
    return offered


def _hook_name(suffix: str) -> str:
    return hook_name("{L}", suffix)


def _doc_first_block(obj) -> str:
    """A docstring up to its first example, as Markdown (reST ``code`` renders as code already)."""
    doc = inspect.getdoc(obj) or ""
    return doc.split(">>>")[0].strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# -- generated pages ------------------------------------------------------------------------------


def architecture_markdown(spec: ArchitectureSpec) -> str:
    route = spec.routing.route
    shared = (
        f"yes: `{spec.shared_experts}` in the MoE block; count {_shared_count(spec)}"
        if spec.shared_experts
        else "none"
    )
    checkpoints = "\n".join(f"- [`{c}`](https://huggingface.co/{c})" for c in spec.checkpoints) or "- (none listed)"
    offered = offered_hooks(spec)
    missing = [s for s in HOOK_TABLE if s not in offered]
    hook_rows = "\n".join(
        f"| `{_hook_name(s)}` | {SCOPES[HOOK_TABLE[s].scope]} | `{HOOK_TABLE[s].shape}` | "
        f"{'yes' if HOOK_TABLE[s].writable else 'read-only'} |"
        for s in offered
    )
    why_missing = []
    for suffix in missing:
        if HOOK_TABLE[suffix].scope == "shared":
            why_missing.append(f"- `{suffix}`: this family has no shared experts.")
        elif suffix == "hook_expert_out":
            why_missing.append(
                f"- `{suffix}`: the experts are a `{spec.experts_layout}` (one module per expert), not "
                "HF's fused experts called with `(hidden, index, weights)`, so per-slot outputs are not "
                "intercepted."
            )
        else:
            why_missing.append(f"- `{suffix}`")
    missing_text = "\n".join(why_missing) if why_missing else "None: every hook of the table is offered."
    io_text = ROUTER_IO.get(spec.router_io.name, f"`{spec.router_io.name}`")
    notes = spec.notes or "None."
    return f"""# {", ".join(f"`{t}`" for t in spec.model_types)}

<!-- generated by docs/gen_pages.py from {_spec_constant(spec)}: edit the spec, not this page -->

| property | value |
|---|---|
| HF `model_type` | {", ".join(f"`{t}`" for t in spec.model_types)} |
| spec | `{_spec_constant(spec)}` |
| scoring | `{spec.routing.scoring}` |
| routing rule | {_cell(spec.routing.summary)} |
| routing function | `moelens.architectures.routing.{route.__name__}` |
| router output format | `{spec.router_io.name}` |
| shared experts | {shared} |
| experts layout | `{spec.experts_layout}` |
| MoE block returns a tuple | {"yes" if spec.moe_returns_tuple else "no"} |
| number of experts | `config.{spec.n_experts_attr}` |
| k (experts per token) | `config.{spec.top_k_attr}` |
| norms | {"LayerNorm" if spec.norm == "layer" else "RMSNorm"} (epsilon `config.{spec.norm_eps_attr}`) |
| residual stream | {"additive" if spec.residual.additive else "**not additive**"}: {_cell(spec.residual.note)} |

## Checkpoints it covers

{checkpoints}

## Module paths

Dotted attribute paths; `a|b` lists candidates where HF renamed a module between releases.

| what | path |
|---|---|
| decoder layers (from the causal LM) | `{spec.layers}` |
| final norm (from the causal LM) | `{spec.final_norm}` |
| MoE block, or the dense MLP (from a decoder layer) | `{spec.moe_block}` |
| attention (from a decoder layer; `hook_attn_out`) | `{spec.attention}` |
| attention norm (from a decoder layer) | `{spec.attn_norm}` |
| pre-MLP norm (from a decoder layer; its input is `hook_resid_mid`) | `{spec.mlp_norm}` |
| router (from the MoE block) | `{spec.router}` |
| experts (from the MoE block) | `{spec.experts}` |
| shared experts (from the MoE block) | {f"`{spec.shared_experts}`" if spec.shared_experts else "none"} |

A decoder layer is an MoE layer when its MoE block has both a router and experts at these paths;
the others (dense layers, e.g. the first layers of DeepSeek models) get only the per-layer hooks
(residual stream, `hook_attn_out`, `hook_mlp_out`).
`model.cfg.moe_layers` lists the MoE layers.

## Routing rule

```text
{spec.routing.summary}
```

`{route.__name__}`: {_doc_first_block(route)}

When no hook edits the router logits, HF's own router output is used unchanged (bit-identical
logits). When a hook or an intervention edits `hook_router_logits`, moelens recomputes the
scores, the top-k selection and the weights from the edited logits with
`{route.__name__}`, which mirrors HF's router step by step. See
[Routing rules](../concepts/routing.md).

## Router output format

{io_text}

## Notes

{notes}

## Hooks offered

| hook | where | shape | writable |
|---|---|---|---|
{hook_rows}

Not offered:

{missing_text}
"""


def error_header(cls: type) -> str:
    parents = [b.__name__ for b in cls.__bases__]
    doc = (inspect.getdoc(cls) or "").split("\n\n")[0]  # the summary; the example is on the API page
    if cls is errors.MoelensError:
        catch = "Catch it to handle every error moelens raises on purpose."
    else:
        catch = f"Catch it as `{cls.__name__}`, as `MoelensError`, or as the builtin `{parents[-1]}`."
    import moelens

    # the API page documents it under the name users import it by (moelens.X, or moelens.errors.X)
    path = f"moelens.{cls.__name__}" if getattr(moelens, cls.__name__, None) is cls else f"moelens.errors.{cls.__name__}"
    return (
        f"`class {path}({', '.join(parents)})`\n\n"
        f"{doc} {catch} API: [`{cls.__name__}`](../api/errors.md#{path})."
    )


def error_stub(cls: type) -> str:
    return f"""# {cls.__name__}

<!-- moelens:error {cls.__name__} -->

!!! warning "Not written yet"
    This page was generated because `docs/errors/{cls.__name__}.md` does not exist. Write it with
    three sections: Symptom, Cause, Fix.
"""


def _neutralise_links(markdown: str) -> str:
    """Relative links in a model card point into the package, not the site: keep their text."""
    return re.sub(r"(!?)\[([^\]]*)\]\((?!https?://|#)([^)]*)\)", lambda m: f"{m.group(2)} (`{m.group(3)}`)", markdown)


def zoo_markdown(name: str, readme: Path) -> str:
    card = readme.read_text(encoding="utf-8")
    if card.startswith("---\n") and "\n---\n" in card[4:]:  # HF model-card metadata, not content
        card = card[4:].split("\n---\n", 1)[1]
    card = _neutralise_links(card)
    if not card.lstrip().startswith("# "):
        card = f"# moelens/{name}\n\n{card}"
    return f"{card}\n\n---\n\nThis page is `moelens/zoo/{name}/README.md`, the model card shipped with the package.\n"


def generated_pages() -> dict[str, str]:
    """Every generated page, ``{docs path: markdown}``."""
    pages = {arch_page(spec): architecture_markdown(spec) for spec in specs()}
    for cls in error_classes():
        if not (DOCS / error_page(cls)).exists():
            pages[error_page(cls)] = error_stub(cls)
    for name, readme in zoo_cards().items():
        pages[f"zoo/{name}.md"] = zoo_markdown(name, readme)
    return pages


# -- tables for hand-written pages ----------------------------------------------------------------


def hook_table() -> str:
    rows = [
        f"| `{_hook_name(s)}` | `{r.shape}` | {'yes' if r.writable else 'read-only'} | "
        f"{SCOPES[r.scope]} | {'yes' if r.opt_in else ''} | {_cell(r.doc)} |"
        for s, r in HOOK_TABLE.items()
    ]
    header = "| hook name | shape | writable | offered on | opt-in | what it holds |\n|---|---|---|---|---|---|"
    return "\n".join([header, *rows])


def routing_table(prefix: str) -> str:
    header = "| family | scoring | rule | router output |\n|---|---|---|---|"
    rows = [
        f"| [{', '.join(f'`{t}`' for t in s.model_types)}]({prefix}{arch_page(s)}) | `{s.routing.scoring}` | "
        f"{_cell(s.routing.summary)} | `{s.router_io.name}` |"
        for s in specs()
    ]
    return "\n".join([header, *rows])


def architectures_table(prefix: str) -> str:
    header = "| family | checkpoints | experts per token | shared experts |\n|---|---|---|---|"
    rows = [
        f"| [{', '.join(f'`{t}`' for t in s.model_types)}]({prefix}{arch_page(s)}) | "
        f"{', '.join(f'`{c}`' for c in s.checkpoints) or '-'} | `config.{s.top_k_attr}` of "
        f"`config.{s.n_experts_attr}` | {'`' + s.shared_experts + '`' if s.shared_experts else 'none'} |"
        for s in specs()
    ]
    return "\n".join([header, *rows])


def errors_table(prefix: str) -> str:
    header = "| error | also a | raised when |\n|---|---|---|"
    rows = [
        f"| [`{c.__name__}`]({prefix}{error_page(c)}) | "
        f"{', '.join(f'`{b.__name__}`' for b in c.__bases__ if b is not errors.MoelensError) or '-'} | "
        f"{_cell(inspect.getdoc(c) or '')} |"
        for c in error_classes()
    ]
    return "\n".join([header, *rows])


def zoo_table(prefix: str) -> str:
    try:
        from moelens.zoo import ZOO_MODELS, resolve
    except ImportError:
        return "No zoo is installed with this version of moelens."
    cards = zoo_cards()
    header = "| name | model | packaged | card |\n|---|---|---|---|"
    rows = []
    for name, summary in ZOO_MODELS.items():
        packaged = "yes" if resolve(f"moelens/{name}") is not None else "not yet"
        card = f"[card]({prefix}zoo/{name}.md)" if name in cards else "-"
        rows.append(f"| `moelens/{name}` | {_cell(summary)} | {packaged} | {card} |")
    return "\n".join([header, *rows])


def fill_markers(markdown: str, page_path: str) -> str:
    """Replace every ``<!-- moelens:NAME [ARG] -->`` of a page; an unknown marker raises."""
    prefix = "../" * page_path.count("/")  # links are relative to the page

    def render(match: re.Match) -> str:
        name, arg = match.groups()
        if name == "hook-table":
            return hook_table()
        if name == "routing-table":
            return routing_table(prefix)
        if name == "architectures-table":
            return architectures_table(prefix)
        if name == "errors-table":
            return errors_table(prefix)
        if name == "zoo-table":
            return zoo_table(prefix)
        if name == "error":
            cls = getattr(errors, arg or "", None)
            if cls is None or arg not in errors.__all__:
                raise ValueError(f"{page_path}: <!-- moelens:error {arg} --> names no class of moelens.errors.__all__")
            return error_header(cls)
        raise ValueError(f"{page_path}: unknown marker <!-- moelens:{name} -->")

    return MARKER.sub(render, markdown)


def nav_additions() -> dict[str, list]:
    """Entries appended to the nav sections that hold the given index page."""
    return {
        "architectures/index.md": [{", ".join(s.model_types): arch_page(s)} for s in specs()],
        "errors/index.md": [{cls.__name__: error_page(cls)} for cls in error_classes()],
        "zoo/index.md": [{f"moelens/{name}": f"zoo/{name}.md"} for name in zoo_cards()],
    }


# -- MkDocs hook events ---------------------------------------------------------------------------


def _extend_nav(nav: list, additions: dict[str, list]) -> None:
    for item in nav:
        if not isinstance(item, dict):
            continue
        for value in item.values():
            if isinstance(value, list):
                anchors = [a for a in additions if a in value or any(isinstance(v, dict) and a in v.values() for v in value)]
                for anchor in anchors:
                    value.extend(additions[anchor])
                _extend_nav(value, additions)


def tutorial_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment settings for the kernels that execute the tutorials during the build.

    The kernels run in ``docs/tutorials/``, where the tutorials' relative ``../shared/data`` does not
    exist, so the data folder is named from the repository root (unless ``MOELENS_DATA_DIR`` is set);
    they import this checkout; and they print no progress bars or library log lines, which would
    show as red stderr boxes on the pages (``MOELENS_DOCS_BUILD`` turns off the tutorials' own bars).
    The tutorials run at their quick size (``MOELENS_TUTORIAL_SMALL=1``): at full size they took over
    20 minutes of a 2-core machine, which is not what a docs build is for; the full-size findings are
    quoted in the tutorials' text. ``MOELENS_TUTORIAL_SMALL=0 mkdocs build`` executes them at full size.
    """
    environ = dict(os.environ if environ is None else environ)
    settings = {
        "MOELENS_DOCS_BUILD": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
        "TQDM_DISABLE": "1", "MOELENS_TUTORIAL_SMALL": environ.get("MOELENS_TUTORIAL_SMALL") or "1",
        # One intra-op thread per kernel: the tutorials' models are tiny, and on a loaded 2-core machine
        # two OpenMP threads spin-waiting burned 14x the CPU time of one (tutorial 03: 276 s vs 19 s).
        "OMP_NUM_THREADS": environ.get("OMP_NUM_THREADS") or "1",
        # tqdm.auto warns once per kernel when ipywidgets is missing (the pages have no widgets anyway)
        "PYTHONWARNINGS": ",".join(w for w in (environ.get("PYTHONWARNINGS"), "ignore:IProgress not found") if w),
    }
    shared = ROOT.parent / "shared" / "data"
    if not environ.get("MOELENS_DATA_DIR") and shared.is_dir():
        settings["MOELENS_DATA_DIR"] = str(shared)
    path = environ.get("PYTHONPATH", "")
    if str(ROOT) not in path.split(os.pathsep):
        settings["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), path) if p)
    return settings


def on_config(config, **kwargs):
    _extend_nav(config["nav"], nav_additions())
    os.environ.update(tutorial_environment())  # inherited by the kernels mkdocs-jupyter starts
    return config


def on_files(files, config, **kwargs):
    from mkdocs.structure.files import File

    for path, content in generated_pages().items():
        if files.get_file_from_path(path) is None:
            files.append(File.generated(config, path, content=content))
    return files


def on_page_markdown(markdown, page, config, files, **kwargs):
    return fill_markers(markdown, page.file.src_uri)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "generated-docs")
    for path, content in generated_pages().items():
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        print(target)
