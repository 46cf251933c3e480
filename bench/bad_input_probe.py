"""Probe of bad inputs (issue #23): each case is classified clear / raw / misleading / silent.

clear: a MoelensError whose message holds the expected fragment (the bad value) and no hub blame;
raw: any other exception; misleading: a MoelensError without the fragment, or blaming the hub;
silent: no error (or expensive work started before the refusal, when the case says it must not).

    .venv/bin/python bench/bad_input_probe.py            # counts per kind
    .venv/bin/python bench/bad_input_probe.py --verbose  # one line per case
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

warnings.simplefilter("ignore")


class ExpensiveWork(Exception):
    """Raised by the patched heavy steps: the call got past its argument checks."""


def _heavy(*args, **kwargs):
    raise ExpensiveWork


def main(verbose: bool) -> dict:
    import moelens
    import moelens.analysis as analysis
    import moelens.tasks.evaluate  # noqa: F401
    ev = sys.modules["moelens.tasks.evaluate"]
    from moelens import Ablate, Force, HookedMoE, Patch, Perturb, Scale
    from moelens.errors import MoelensError
    from moelens.interventions import from_dict

    model = HookedMoE.from_pretrained("moelens/mixtral-tiny")
    ids = torch.tensor([[4, 5, 6]])
    tmp = Path(tempfile.mkdtemp())
    (tmp / "latin1.jsonl").write_bytes('{"text": "caf\xe9", "label": 1}\n'.encode("latin-1"))
    (tmp / "latin1.json").write_bytes('{"task": "caf\xe9"}'.encode("latin-1"))
    (tmp / "notext.jsonl").write_text('{"label": 1}\n')
    (tmp / "nulltext.jsonl").write_text('{"text": null, "label": 1}\n')
    (tmp / "array.jsonl").write_text('["a", 1]\n')
    (tmp / "mmlu.jsonl").write_text(json.dumps({"text": "q?", "dataset": "mmlu", "domain": "mmlu", "choices": ["a", "b", "c", "d"], "label": 0}) + "\n")
    (tmp / "gsm.jsonl").write_text(json.dumps({"text": "1+1?", "dataset": "gsm8k", "domain": "math", "answer": "2"}) + "\n")
    (tmp / "sst2.jsonl").write_text(json.dumps({"text": "fun", "dataset": "sst2", "domain": "sentiment", "label": 1}) + "\n")
    (tmp / "one").mkdir()
    (tmp / "one" / "dev.jsonl").write_text(json.dumps({"text": "fun", "dataset": "sst2", "label": 1}) + "\n")
    (tmp / "empty").mkdir()
    (tmp / "two").mkdir()
    for split in ("dev", "extra"):
        (tmp / "two" / f"{split}.jsonl").write_text(json.dumps({"text": "fun", "label": 1}) + "\n")
    (tmp / "bin.jsonl").write_bytes(bytes(range(256)))
    (tmp / "bad.json").write_text("{not json")
    (tmp / "exists.csv").write_text("x")
    recs = [{"id": "a", "text": "fun", "label": 1}, {"id": "b", "text": "dull", "label": 0}]
    nan = float("nan")

    def nan_hook(x, hook):
        return torch.full_like(x, nan)

    def inf_hook(x, hook):
        return torch.full_like(x, float("inf"))

    def reenter(x, hook):
        model(ids)

    def study(**kw):
        return moelens.reweighting_study(model, "sst2", select_on=recs, evaluate_on=[{"id": "c", "text": "ok", "label": 1}], progress=False, **kw)

    def study_raw(**kw):
        return moelens.reweighting_study(model, "sst2", progress=False, **{"evaluate_on": [{"id": "c", "text": "ok", "label": 1}], **kw})

    def evaluate(**kw):
        return moelens.evaluate(model, kw.pop("task", "sst2"), progress=False, **{"data": recs, **kw})

    api = {
        "settings": [
            ("study n_random=-1", lambda: study(n_random=-1), "n_random=-1"),
            ("study n_random=1.5", lambda: study(n_random=1.5), "n_random=1.5"),
            ("study factors=()", lambda: study(factors=()), "factors=()"),
            ("study factor nan", lambda: study(factors=(nan,)), "nan"),
            ("study factor -1", lambda: study(factors=(-1.0,)), "-1"),
            ("study factor 'x'", lambda: study(factors=("x",)), "'x'"),
            ("study tune_steps=-2", lambda: study(tune_steps=-2), "tune_steps=-2"),
            ("study batch_size=0", lambda: study(batch_size=0), "batch_size=0"),
            ("study push=-1", lambda: study(recipes=["perturb"], push=-1.0), "push=-1"),
            ("study n_experts=1.5", lambda: study(n_experts=1.5), "n_experts=1.5"),
            ("study select_limit=0", lambda: study(select_limit=0), "select_limit=0"),
            ("evaluate max_length=0", lambda: evaluate(max_length=0), "max_length=0"),
            ("evaluate shots=-1", lambda: evaluate(shots=-1), "shots=-1"),
            ("evaluate shots=1000", lambda: evaluate(shots=1000, shot_records=recs * 2), "1000"),
            ("evaluate shots=2.5", lambda: evaluate(shots=2.5), "shots=2.5"),
            ("evaluate batch_size=0", lambda: evaluate(batch_size=0), "batch_size=0"),
            ("evaluate limit=0", lambda: evaluate(limit=0), "limit=0"),
            ("evaluate shots data_dir", lambda: evaluate(shots=1, data_dir=tmp / "empty"), "shot"),
            # invented beyond the examples
            ("evaluate limit=-1", lambda: evaluate(limit=-1), "limit=-1"),
            ("evaluate limit=1.5", lambda: evaluate(limit=1.5), "limit=1.5"),
            ("evaluate batch_size=True", lambda: evaluate(batch_size=True), "batch_size=True"),
            ("evaluate max_length=-5", lambda: evaluate(max_length=-5), "max_length=-5"),
            ("evaluate max_length=2.5", lambda: evaluate(max_length=2.5), "max_length=2.5"),
            ("evaluate seed=-1", lambda: evaluate(seed=-1), "seed=-1"),
            ("evaluate shots=True", lambda: evaluate(shots=True), "shots=True"),
            ("evaluate split nope", lambda: moelens.evaluate(model, "sst2", split="nope", progress=False), "nope"),
            ("evaluate interventions str", lambda: evaluate(interventions="abc"), "abc"),
            ("evaluate task 3", lambda: evaluate(task=3), "int"),
            ("study on='x'", lambda: study(on="x"), "'x'"),
            ("study driver_method", lambda: study(driver_method="nope"), "nope"),
            ("study recipes nope", lambda: study(recipes=["nope"]), "nope"),
            ("study tune_rank=0", lambda: study(tune_rank=0), "tune_rank=0"),
            ("study push=nan", lambda: study(push=nan), "push=nan"),
            ("study factors str", lambda: study(factors="0.8"), "0.8"),
            ("study factors bool", lambda: study(factors=[True]), "True"),
            ("study factor inf", lambda: study(factors=[float("inf")]), "inf"),
            ("study select_on missing", lambda: study_raw(select_on="/no/such.jsonl"), "/no/such.jsonl"),
            ("study overlap", lambda: study_raw(select_on=recs, evaluate_on=recs), "share"),
            ("study n_random=True", lambda: study(n_random=True), "n_random=True"),
        ],
        "records": [
            ("record without text", lambda: evaluate(data=[{"label": 1}]), "text"),
            ("text null", lambda: evaluate(data=[{"text": None, "label": 1}]), "text"),
            ("file without text", lambda: evaluate(data=str(tmp / "notext.jsonl")), "notext.jsonl"),
            ("file text null", lambda: evaluate(data=str(tmp / "nulltext.jsonl")), "nulltext.jsonl"),
            ("JSON array line", lambda: evaluate(data=str(tmp / "array.jsonl")), "array.jsonl"),
            ("latin-1 file", lambda: evaluate(data=str(tmp / "latin1.jsonl")), "latin1.jsonl"),
            ("MMLU file as sst2", lambda: evaluate(data=str(tmp / "mmlu.jsonl")), "mmlu"),
            ("gsm8k file as yelp", lambda: evaluate(task="yelp", data=str(tmp / "gsm.jsonl")), "gsm8k"),
            ("sst2 file as mmlu", lambda: evaluate(task="mmlu", data=str(tmp / "sst2.jsonl")), "sst2"),
            ("sst2 records as gsm8k", lambda: evaluate(task="gsm8k", data=[{"text": "x", "dataset": "sst2", "label": 1}]), "sst2"),
            ("record without label", lambda: evaluate(data=[{"text": "x"}]), "label"),
            ("record list of strings", lambda: evaluate(data=["a", "b"]), "str"),
            ("folder with one split", lambda: evaluate(data=str(tmp / "one")), "__ok__"),
            ("empty folder", lambda: evaluate(data=str(tmp / "empty")), "empty"),
            ("label as word", lambda: evaluate(data=[{"text": "x", "label": "positive"}]), "label"),
            ("label out of range", lambda: evaluate(data=[{"text": "x", "label": 7}]), "7"),
            ("no records", lambda: evaluate(data=[]), "no records"),
            ("generator of records", lambda: evaluate(data=(r for r in recs)), "generator"),
            ("one dict", lambda: evaluate(data=recs[0]), "dict"),
            ("missing file", lambda: evaluate(data=str(tmp / "nothere.jsonl")), "nothere.jsonl"),
            ("bad JSON line", lambda: evaluate(data=str(tmp / "bad.json")), "bad.json"),
            ("binary file", lambda: evaluate(data=str(tmp / "bin.jsonl")), "bin.jsonl"),
            ("mmlu without choices", lambda: evaluate(task="mmlu", data=[{"text": "q", "dataset": "mmlu", "label": 0}]), "choices"),
            ("CR records as yelp", lambda: evaluate(task="yelp", data=[{"text": "x", "dataset": "cr", "label": 1}]), "cr"),
            ("math records as sst5", lambda: evaluate(task="sst5", data=[{"text": "x", "domain": "math", "answer": "1"}]), "math"),
            ("text is a list", lambda: evaluate(data=[{"text": ["a"], "label": 1}]), "list"),
            ("shot_records without text", lambda: evaluate(shots=1, shot_records=[{"label": 1}]), "text"),
            ("folder two splits", lambda: evaluate(data=str(tmp / "two")), "dev"),
        ],
        "nonfinite": [
            ("NaN hook_out", lambda: model.run_with_hooks(ids, [("blocks.0.moe.hook_out", nan_hook)]), "blocks.0.moe.hook_out"),
            ("inf hook_out", lambda: model.run_with_hooks(ids, [("blocks.1.moe.hook_out", inf_hook)]), "blocks.1.moe.hook_out"),
            ("NaN router logits", lambda: model.run_with_hooks(ids, [("blocks.0.moe.hook_router_logits", nan_hook)]), "hook_router_logits"),
            ("inf router logits", lambda: model.run_with_hooks(ids, [("blocks.1.moe.hook_router_logits", inf_hook)]), "hook_router_logits"),
            ("NaN resid_pre", lambda: model.run_with_hooks(ids, [("blocks.1.hook_resid_pre", nan_hook)]), "blocks.1.hook_resid_pre"),
            ("NaN topk weights", lambda: model.run_with_hooks(ids, [("blocks.0.moe.hook_topk_weights", nan_hook)]), "hook_topk_weights"),
            ("Patch +inf", lambda: Patch("blocks.0.moe.hook_out", torch.full((32,), float("inf"))), "inf"),
            ("Patch -inf", lambda: Patch("blocks.0.moe.hook_out", torch.full((32,), float("-inf"))), "inf"),
            ("NaN metric incl_bwd", lambda: model.run_with_cache(ids, incl_bwd=True, metric=lambda logits: logits.sum() * nan), "metric"),
            ("NaN via Scale factor on weights", lambda: model.run_with_hooks(ids, [("blocks.2.moe.hook_topk_weights", inf_hook)]), "hook_topk_weights"),
            ("in-place NaN", lambda: model.run_with_hooks(ids, [("blocks.1.hook_resid_post", lambda x, hook: x.fill_(nan))]), "blocks.1.hook_resid_post"),
            ("NaN with intervene()", lambda: _in_block(model, [("blocks.0.moe.hook_in", nan_hook)], ids), "blocks.0.moe.hook_in"),
            ("NaN Patch router via Patch -inf ok", lambda: model.run_with_interventions(ids, Patch("blocks.0.moe.hook_router_logits", torch.tensor([float("-inf")] + [0.0] * 7))), "__ok__"),
            ("NaN stop_at_layer", lambda: model.run_with_hooks(ids, [("blocks.0.hook_resid_post", nan_hook)], stop_at_layer=2), "blocks.0.hook_resid_post"),
            ("NaN in evaluate hooks", lambda: evaluate(interventions=[("blocks.0.moe.hook_out", nan_hook)]), "blocks.0.moe.hook_out"),
            ("NaN in cache interventions", lambda: model.run_with_cache(ids, fwd_hooks=[("blocks.0.moe.hook_in", nan_hook)]), "blocks.0.moe.hook_in"),
        ],
        "semantics": [
            ("(None, fn) hook", lambda: model.run_with_hooks(ids, [(None, lambda x, hook: None)]), "None"),
            ("Perturb sign=True", lambda: Perturb(0, 1, sign=True), "sign=True"),
            ("Perturb magnitude=True", lambda: Perturb(0, 1, magnitude=True), "magnitude=True"),
            ("Scale factor=False", lambda: Scale(0, 1, factor=False), "factor=False"),
            ("Patch topk 1.7", lambda: model.run_with_interventions(ids, Patch("blocks.0.moe.hook_topk_indices", torch.full((1, 3, 2), 1.7))), "1.7"),
            ("Force 3 for top-2", lambda: model.run_with_interventions(ids, [Force(0, [0, 1]), Force(0, [2])]), "top_k"),
            ("Force 3 in one", lambda: model.run_with_interventions(ids, Force(0, [0, 1, 2])), "top_k"),
            ("top(-1)", lambda: moelens.driver_effects(model, ids, progress=False).top(-1), "-1"),
            ("top(2.5)", lambda: moelens.driver_effects(model, ids, progress=False).top(2.5), "2.5"),
            ("driver perturbation layer", lambda: moelens.driver_effects(model, ids, perturbation=Perturb(0, 3), progress=False), "Perturb"),
            ("triggers special_ids 99999", lambda: moelens.token_triggers(model, ["a b"], experts=[(0, 1)], special_ids=[99999]), "99999"),
            ("triggers special_ids -1", lambda: moelens.token_triggers(model, ["a b"], experts=[(0, 1)], special_ids=[-1]), "-1"),
            ("layers bool", lambda: Scale(True, 1, factor=1.2), "True"),
            ("Perturb sign=False", lambda: Perturb(0, 1, sign=False), "sign=False"),
            ("experts bool", lambda: Ablate(0, True), "True"),
            ("Patch topk 0.5", lambda: model.run_with_interventions(ids, Patch("blocks.1.moe.hook_topk_indices", torch.tensor([0.5, 1.0]))), "0.5"),
            ("Force 2+1 per position", lambda: model.run_with_interventions(ids, [Force(1, [3, 4]), Force(1, 5)]), "top_k"),
            ("top(0)", lambda: moelens.driver_effects(model, ids, progress=False).top(0), "n=0"),
            ("top(-3)", lambda: moelens.driver_effects(model, ids, progress=False).top(-3), "-3"),
            ("driver perturbation experts", lambda: moelens.driver_effects(model, ids, perturbation=Perturb("all", 2), progress=False), "Perturb"),
            ("triggers special_ids str", lambda: moelens.token_triggers(model, ["a b"], experts=[(0, 1)], special_ids="abc"), "abc"),
            ("triggers special_ids 1.5", lambda: moelens.token_triggers(model, ["a b"], experts=[(0, 1)], special_ids=[1.5]), "1.5"),
            ("hook pair (None, fn) in hooks()", lambda: _in_hooks(model, [(None, lambda x, hook: None)], ids), "None"),
            ("top_tokens(-1)", lambda: moelens.token_triggers(model, ["a b"], experts=[(0, 1)], progress=False).top_tokens(-1), "-1"),
        ],
        "raw": [
            ("hook name 5", lambda: model.run_with_hooks(ids, [(5, lambda x, hook: None)]), "5"),
            ("names_filter=3", lambda: model.run_with_cache(ids, names_filter=3), "names_filter=3"),
            ("Ablate in bwd_hooks", lambda: model.run_with_hooks(ids, bwd_hooks=[Ablate(0, 1)]), "Ablate"),
            ("hook fn not callable", lambda: model.run_with_hooks(ids, [("blocks.0.moe.hook_out", 3)]), "3"),
            ("re-entry", lambda: model.run_with_hooks(ids, [("blocks.0.moe.hook_out", reenter)]), "inside a hook"),
            ("from_dict dtype", lambda: from_dict({"type": "Patch", "hook_name": "blocks.0.moe.hook_out", "value": {"tensor": [1.0], "dtype": "floaty"}}), "floaty"),
            ("from_dict slice", lambda: from_dict({"type": "Scale", "layers": 0, "experts": 1, "factor": 1.2, "positions": {"slice": ["a", 2, None]}}), "'a'"),
            ("from_dict tensor", lambda: from_dict({"type": "Patch", "hook_name": "blocks.0.moe.hook_out", "value": {"tensor": "abc"}}), "abc"),
            ("uint8 ids (documented: cast to int64)", lambda: model(ids.to(torch.uint8)), "__ok__"),
            ("meta ids", lambda: model(ids.to("meta")), "meta"),
            ("float ids", lambda: model(ids.float()), "float"),
            ("collect {'a': None}", lambda: moelens.collect_routing_stats(model, {"a": None}, progress=False), "None"),
            ("collect {'a': 3}", lambda: moelens.collect_routing_stats(model, {"a": 3}, progress=False), "int"),
            ("RoutingStats.load bad json", lambda: _bad_stats(tmp), "stats.json"),
            ("EvalResult.load bad json", lambda: ev.EvalResult.load(tmp / "bad.json"), "bad.json"),
            ("EvalResult.load missing", lambda: ev.EvalResult.load(tmp / "nothere.json"), "nothere.json"),
            ("token_values", lambda: _tv(), "high"),
            ("token_records exists", lambda: moelens.collect_routing_stats(model, {"a": ["x y"]}, token_records=tmp / "exists.csv", progress=False), "exists.csv"),
            ("from_hf tokenizer str", lambda: HookedMoE.from_hf(model.hf_model, tokenizer="gpt2"), "gpt2"),
            ("from_hf not a model", lambda: HookedMoE.from_hf("gpt2"), "str"),
            ("hook name 5 in hooks()", lambda: _in_hooks(model, [(5, lambda x, hook: None)], ids), "5"),
            ("names_filter [1, 2]", lambda: model.run_with_cache(ids, names_filter=[1, 2]), "[1, 2]"),
            ("Scale in bwd_hooks", lambda: model.run_with_hooks(ids, bwd_hooks=[Scale(0, 1, factor=1.2)]), "Scale"),
            ("bwd hook triple", lambda: model.run_with_hooks(ids, bwd_hooks=[("blocks.0.hook_resid_pre", None, 3)]), "pair"),
            ("re-entry run_with_cache", lambda: model.run_with_hooks(ids, [("blocks.1.hook_resid_pre", lambda x, hook: model.run_with_cache(ids))]), "inside a hook"),
            ("from_dict slice floats", lambda: from_dict({"type": "Scale", "layers": 0, "experts": 1, "factor": 1.2, "positions": {"slice": [0.5, 2, None]}}), "0.5"),
            ("from_dict tensor nested str", lambda: from_dict({"type": "Patch", "hook_name": "blocks.0.moe.hook_out", "value": {"tensor": [["a"]]}}), "a"),
            ("complex ids", lambda: model(ids.to(torch.complex64)), "complex"),
            ("collect {'a': [1, 2]}", lambda: moelens.collect_routing_stats(model, {"a": [1, 2]}, progress=False), "list"),
            ("RoutingStats.load damaged safetensors", lambda: _bad_stats(tmp, good_json=True), "stats.safetensors"),
            ("EvalResult.load latin-1", lambda: ev.EvalResult.load(tmp / "latin1.json"), "latin1.json"),
            ("token_values str tokens", lambda: _tv("abc", [1.0, 2.0, 3.0]), "abc"),
            ("token_records exists (drivers)", lambda: moelens.collect_routing_stats(model, {"a": ["x y"]}, token_records=str(tmp / "exists.csv"), progress=False), "exists.csv"),
            ("from_hf tokenizer 3", lambda: HookedMoE.from_hf(model.hf_model, tokenizer=3), "3"),
        ],
    }
    try:
        from moelens.backends.nnsight import NNsightMoE

        traced = NNsightMoE.from_hf(model.hf_model, tokenizer=model.tokenizer)
        api["raw"].append(("nnsight first_order", lambda: moelens.driver_effects(traced, ids, method="first_order", progress=False), "first_order"))
        api["nonfinite"].append(("nnsight NaN router", lambda: traced.run_with_interventions(ids, [Patch("blocks.0.moe.hook_router_logits", torch.full((8,), nan))]), "nan"))
    except ImportError:
        pass

    counts: dict[str, dict[str, int]] = {}
    real = {name: getattr(ev, name) for name in ("choice_logprobs", "greedy_generate")}
    for kind, cases in api.items():
        tally = counts.setdefault(kind, {"clear": 0, "raw": 0, "misleading": 0, "silent": 0})
        for name, call, fragment in cases:
            patch = kind == "settings"
            if patch:  # the settings must be refused before any model work
                ev.choice_logprobs = ev.greedy_generate = _heavy
                analysis.collect_routing_stats, saved = _heavy, analysis.collect_routing_stats
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = call()
                verdict = "clear" if fragment == "__ok__" else "silent"
                detail = repr(result)[:80]
            except ExpensiveWork:
                verdict, detail = "silent", "model work started"
            except MoelensError as error:
                text = str(error)
                blamed = "hub" in text.lower() and "hub" not in name
                verdict = "clear" if fragment != "__ok__" and fragment.lower() in text.lower() and not blamed else "misleading"
                detail = f"{type(error).__name__}: {text[:140]}"
            except (Exception, RecursionError) as error:  # noqa: BLE001
                verdict, detail = "raw", f"{type(error).__name__}: {str(error)[:140]}"
            finally:
                if patch:
                    ev.choice_logprobs, ev.greedy_generate = real["choice_logprobs"], real["greedy_generate"]
                    analysis.collect_routing_stats = saved
            tally[verdict] += 1
            if verbose:
                print(f"{kind:10} {verdict:10} {name:28} {detail}")
    counts["cli"] = _cli(tmp, verbose)
    return counts


def _cli(tmp: Path, verbose: bool) -> dict[str, int]:
    """CLI cases: exit 2 and one line naming the value, before the model loads (a loaded model = silent)."""
    from typer.testing import CliRunner

    import moelens.cli as cli

    (tmp / "bin.jsonl").write_bytes(bytes(range(256)))
    out = str(tmp / "out")
    cases = [
        ("study --n-random -1", ["study", "--n-random", "-1"], "-1"),
        ("study --tune-steps -1", ["study", "--tune-steps", "-1"], "-1"),
        ("study --n-experts 0", ["study", "--n-experts", "0"], "0"),
        ("study --factor nan", ["study", "--factor", "nan"], "nan"),
        ("study --out file", ["study", "--out", str(tmp / "exists.csv")], "exists.csv"),
        ("study --task nope", ["study", "--task", "nope"], "nope"),
        ("study --recipe nope", ["study", "--recipe", "nope"], "nope"),
        ("stats --data latin1", ["stats", "--data", f"a={tmp / 'latin1.jsonl'}", "--out", out], "latin1.jsonl"),
        ("stats --data binary", ["stats", "--data", f"a={tmp / 'bin.jsonl'}", "--out", out], "bin.jsonl"),
        ("stats --data array", ["stats", "--data", f"a={tmp / 'array.jsonl'}", "--out", out], "array.jsonl"),
        ("stats --data empty dir", ["stats", "--data", f"a={tmp / 'empty'}", "--out", out], "empty"),
        ("stats --data one split", ["stats", "--data", f"a={tmp / 'one'}", "--out", out], "__ok__"),
        ("drivers --data missing", ["drivers", "--data", "a=nothere.jsonl", "--out", out], "nothere.jsonl"),
        ("analyze --backend nope", ["analyze", "--backend", "nope", "--out", out], "nope"),
        ("report on a file", ["report", str(tmp / "exists.csv")], "exists.csv"),
        ("--version", ["--version"], "__ok__"),
        ("stats -h", ["stats", "-h"], "__ok__"),
        ("study --n-random abc", ["study", "--n-random", "abc"], "--n-random"),
        ("study --factor 0", ["study", "--factor", "0"], "--factor 0"),
        ("study --factor -1", ["study", "--factor", "-1"], "-1"),
        ("study --select-limit 0", ["study", "--select-limit", "0"], "0"),
        ("study --select-on missing", ["study", "--select-on", "/no/such.jsonl"], "/no/such.jsonl"),
        ("study --evaluate-on latin1", ["study", "--evaluate-on", str(tmp / "latin1.jsonl")], "latin1.jsonl"),
        ("study --dtype float8", ["study", "--dtype", "float8"], "float8"),
        ("stats --limit 0", ["stats", "--limit", "0", "--out", out], "--limit"),
        ("stats --bogus", ["stats", "--bogus", "--out", out], "--bogus"),
        ("drivers --backend nnsight no --exact", ["drivers", "--backend", "nnsight", "--out", out], "--exact"),
        ("analyze --study nope", ["analyze", "--study", "nope", "--out", out], "nope"),
        ("analyze --data notext", ["analyze", "--data", f"a={tmp / 'notext.jsonl'}", "--out", out], "text"),
        ("analyze --data two splits", ["analyze", "--data", f"a={tmp / 'two'}", "--out", out], "dev"),
        ("analyze --device tpu", ["analyze", "--device", "tpu", "--out", out], "tpu"),
        ("unknown command", ["nope"], "nope"),
        ("report latin1 section", ["report", str(tmp / "rep")], "latin"),
        ("no arguments", [], "__ok__"),
    ]
    (tmp / "rep" / "sections").mkdir(parents=True)
    (tmp / "rep" / "sections" / "10-latin.html").write_bytes("caf\xe9".encode("latin-1"))
    tally = {"clear": 0, "raw": 0, "misleading": 0, "silent": 0}
    real = cli._load_model
    cli._load_model = _heavy
    try:
        for name, args, fragment in cases:
            result = CliRunner().invoke(cli.app, args)
            lines = [line for line in result.output.splitlines() if line.strip()]
            if isinstance(result.exception, ExpensiveWork):
                verdict = "clear" if fragment == "__ok__" else "silent"  # accepted input reaches the model load
            elif fragment == "__ok__":
                verdict = "clear" if result.exit_code == 0 else ("raw" if result.exit_code == 1 else "misleading")
            elif result.exit_code == 2 and len(lines) == 1 and fragment.lower() in lines[0].lower() and "Traceback" not in result.output:
                verdict = "clear"
            elif result.exit_code == 0:
                verdict = "silent"
            elif result.exit_code == 2:
                verdict = "misleading"
            else:
                verdict = "raw"
            tally[verdict] += 1
            if verbose:
                print(f"{'cli':10} {verdict:10} {name:28} rc={result.exit_code} {(lines[-1] if lines else repr(result.exception))[:140]}")
    finally:
        cli._load_model = real
    return tally


def _bad_stats(tmp: Path, good_json: bool = False):
    from moelens.analysis import RoutingStats

    (tmp / "stats.safetensors").write_bytes(b"")
    (tmp / "stats.json").write_text(json.dumps({"format": "moelens.RoutingStats", "version": 1}) if good_json else "{oops")
    return RoutingStats.load(tmp / "stats")


def _tv(tokens=("a",), values=("high",)):
    from moelens.viz.tokens import token_values

    return token_values(tokens if isinstance(tokens, str) else list(tokens), list(values))


def _in_hooks(model, pairs, ids):
    with model.hooks(pairs):
        return model(ids)


def _in_block(model, pairs, ids):
    with model.intervene(pairs):
        return model(ids)


if __name__ == "__main__":
    totals = main("--verbose" in sys.argv)
    for kind, tally in totals.items():
        print(f"{kind:10} " + "  ".join(f"{k} {v}" for k, v in tally.items()))
