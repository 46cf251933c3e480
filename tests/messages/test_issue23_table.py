"""Issue #23, table-driven by kind: bad settings, bad records, non-finite values, silent semantics, raw
errors. Each case names the expected MoelensError subclass and a fragment that names the bad value;
settings and records are refused before any model work (the heavy steps are patched to fail)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import moelens
from moelens import Ablate, Force, Patch, Perturb, Scale
from moelens.errors import CheckpointError, InterventionError, InvalidInputError, NonFiniteError, ResultFileError
from moelens.interventions import from_dict

from ..models import wrapped

IDS = torch.tensor([[4, 5, 6]])
NAN, INF = float("nan"), float("inf")
RECS = [{"id": "a", "text": "fun", "label": 1}, {"id": "b", "text": "dull", "label": 0}]
EVAL_ON = [{"id": "c", "text": "ok", "label": 1}]


class ModelWorkStarted(Exception):
    """Raised by the patched heavy steps: the call got past its argument checks."""


@pytest.fixture
def no_model_work(monkeypatch):
    """Scoring, generation and routing statistics fail loudly: a refusal must come before them."""
    evaluate_module = sys.modules["moelens.tasks.evaluate"]

    def heavy(*args, **kwargs):
        raise ModelWorkStarted

    monkeypatch.setattr(evaluate_module, "choice_logprobs", heavy)
    monkeypatch.setattr(evaluate_module, "greedy_generate", heavy)
    monkeypatch.setattr(moelens.analysis, "collect_routing_stats", heavy)


def _study(m, **kw):
    return moelens.reweighting_study(m, "sst2", **{"select_on": RECS, "evaluate_on": EVAL_ON, "progress": False, **kw})


def _evaluate(m, task="sst2", **kw):
    return moelens.evaluate(m, task, progress=False, **{"data": RECS, **kw})


SETTINGS = [
    ("study n_random=-1", lambda m, t: _study(m, n_random=-1), "n_random=-1"),
    ("study n_random=1.5", lambda m, t: _study(m, n_random=1.5), "n_random=1.5"),
    ("study n_random=True", lambda m, t: _study(m, n_random=True), "n_random=True"),
    ("study factors=()", lambda m, t: _study(m, factors=()), "factors=() is empty"),
    ("study factor nan", lambda m, t: _study(m, factors=(1.2, NAN)), "factor nan"),
    ("study factor 0", lambda m, t: _study(m, factors=(0,)), "factor 0"),
    ("study factors a string", lambda m, t: _study(m, factors="0.8"), "factors='0.8'"),
    ("study tune_steps=-1", lambda m, t: _study(m, tune_steps=-1), "tune_steps=-1"),
    ("study push=inf", lambda m, t: _study(m, push=INF), "push=inf"),
    ("study driver_method", lambda m, t: _study(m, driver_method="gradient"), "driver_method='gradient'"),
    ("study select_limit=0", lambda m, t: _study(m, select_limit=0), "select_limit=0"),
    ("evaluate max_length=0", lambda m, t: _evaluate(m, max_length=0), "max_length=0"),
    ("evaluate shots=-1", lambda m, t: _evaluate(m, shots=-1), "shots=-1"),
    ("evaluate shots=2.5", lambda m, t: _evaluate(m, shots=2.5), "shots=2.5"),
    ("evaluate shots beyond the pool", lambda m, t: _evaluate(m, shots=1000, shot_records=RECS), "1000 shots"),
    ("evaluate shots, data_dir without the split", lambda m, t: _evaluate(m, shots=1, data_dir=t), "has no sst2/train.jsonl"),
    ("evaluate batch_size=0", lambda m, t: _evaluate(m, batch_size=0), "batch_size=0"),
    ("evaluate limit=-1", lambda m, t: _evaluate(m, limit=-1), "limit=-1"),
    ("evaluate interventions a string", lambda m, t: _evaluate(m, interventions="ablate"), "'ablate'"),
]


@pytest.mark.parametrize(("name", "call", "fragment"), SETTINGS, ids=[c[0] for c in SETTINGS])
def test_settings_are_refused_before_model_work(no_model_work, tmp_path, name, call, fragment):
    with pytest.raises(InvalidInputError) as info:
        call(wrapped("mixtral"), tmp_path)
    assert fragment in str(info.value), f"{name}: {info.value}"
    assert "hub" not in str(info.value).lower(), f"{name} blames the hub: {info.value}"


def _write(tmp_path, name: str, data: bytes | str) -> str:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


RECORDS = [
    ("record without text", lambda t: [{"label": 1}], "record 1 has no 'text' field"),
    ("text null", lambda t: [{"text": None, "label": 1}], "'text' that is None"),
    ("text a list", lambda t: [{"text": ["a"], "label": 1}], "'text' that is a list"),
    ("JSON array line", lambda t: _write(t, "a.jsonl", '["a", 1]\n'), "is a JSON list, not an object"),
    ("latin-1 file", lambda t: _write(t, "l.jsonl", '{"text": "caf\xe9", "label": 1}\n'.encode("latin-1")), "l.jsonl is not UTF-8"),
    ("binary file", lambda t: _write(t, "b.jsonl", bytes(range(256))), "b.jsonl"),
    ("MMLU record scored as sst2", lambda t: [{"text": "q?", "dataset": "mmlu", "choices": list("abcd"), "label": 0}], "is a 'mmlu' record"),
    ("CR record scored as sst2", lambda t: [{"text": "good", "dataset": "cr", "label": 1}], "is a 'cr' record"),
    ("math-domain record as sst2", lambda t: [{"text": "1+1?", "domain": "math", "answer": "2"}], "'math'-domain record"),
    ("label a word", lambda t: [{"text": "x", "label": "positive"}], "no usable gold 'label'"),
    ("missing file", lambda t: str(t / "nothere.jsonl"), "nothere.jsonl"),
    ("empty folder", lambda t: str((t / "empty").mkdir() or t / "empty"), "holds no .jsonl file"),
    ("bad JSON line", lambda t: _write(t, "j.jsonl", '{"text": "a", "label": 1}\n{oops\n'), "j.jsonl:2 is not valid JSON"),
]


@pytest.mark.parametrize(("name", "data", "fragment"), RECORDS, ids=[c[0] for c in RECORDS])
def test_bad_records_are_refused_before_model_work(no_model_work, tmp_path, name, data, fragment):
    with pytest.raises(InvalidInputError) as info:
        _evaluate(wrapped("mixtral"), data=data(tmp_path))
    assert fragment in str(info.value), f"{name}: {info.value}"


def test_other_tasks_records_name_the_task(no_model_work, tmp_path):
    sst2 = _write(tmp_path, "s.jsonl", json.dumps({"text": "x", "dataset": "sst2", "label": 1}) + "\n")
    with pytest.raises(InvalidInputError, match="task 'gsm8k' scores 'gsm8k' records; pass data of that task, or evaluate task 'sst2'"):
        _evaluate(wrapped("mixtral"), "gsm8k", data=sst2)


def test_a_folder_with_one_split_is_read(tmp_path):
    folder = tmp_path / "only"
    folder.mkdir()
    (folder / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECS))
    zoo = moelens.HookedMoE.from_pretrained("moelens/mixtral-tiny")  # scoring texts needs its tokenizer
    assert _evaluate(zoo, data=str(folder)).n == 2  # the only split: used, no split= needed
    (folder / "more.jsonl").write_text("")
    with pytest.raises(InvalidInputError, match=r"holds splits \['dev', 'more'\]: name one file"):
        _evaluate(zoo, data=str(folder))


def _nan(x, hook):
    return torch.full_like(x, NAN)


def _inf(x, hook):
    return torch.full_like(x, INF)


NONFINITE = [
    ("NaN on hook_out", lambda m, t: m.run_with_hooks(IDS, [("blocks.0.moe.hook_out", _nan)]), NonFiniteError, "on 'blocks.0.moe.hook_out' returned"),
    ("+inf on hook_out", lambda m, t: m.run_with_hooks(IDS, [("blocks.1.moe.hook_out", _inf)]), NonFiniteError, "+inf"),
    ("NaN router logits", lambda m, t: m.run_with_hooks(IDS, [("blocks.0.moe.hook_router_logits", _nan)]), NonFiniteError, "'blocks.0.moe.hook_router_logits' returned"),
    ("+inf router logits", lambda m, t: m.run_with_hooks(IDS, [("blocks.1.moe.hook_router_logits", _inf)]), NonFiniteError, "+inf"),
    ("inf topk weights", lambda m, t: m.run_with_hooks(IDS, [("blocks.0.moe.hook_topk_weights", _inf)]), NonFiniteError, "hook_topk_weights"),
    ("NaN residual, stop_at_layer", lambda m, t: m.run_with_hooks(IDS, [("blocks.0.hook_resid_post", _nan)], stop_at_layer=1), NonFiniteError, "hook_resid_post"),
    ("in-place NaN", lambda m, t: m.run_with_hooks(IDS, [("blocks.1.hook_resid_pre", lambda x, hook: x.fill_(NAN))]), NonFiniteError, "edited an activation in place"),
    ("NaN in an intervene() block", lambda m, t: _in_block(m, ("blocks.0.moe.hook_in", _nan)), NonFiniteError, "'blocks.0.moe.hook_in'"),
    ("NaN metric, incl_bwd", lambda m, t: m.run_with_cache(IDS, incl_bwd=True, metric=lambda logits: logits.sum() * NAN), NonFiniteError, "the metric returned nan"),
]


def _in_block(model, pair):
    with model.intervene([pair]):
        return model(IDS)


def test_check_finite_opts_out_and_router_minus_inf_stays_allowed():
    model = wrapped("mixtral")
    blocked = torch.tensor([-INF, 0.0, 0.0, 0.0])
    assert torch.isfinite(model.run_with_interventions(IDS, [Ablate(0, 1), Patch("blocks.1.moe.hook_router_logits", blocked)])).all()
    model.check_finite = False
    try:
        assert model.run_with_hooks(IDS, [("blocks.0.moe.hook_out", _nan)]).isnan().all()
    finally:
        model.check_finite = True


def test_non_finite_values_raise_through_nnsight_too():
    pytest.importorskip("nnsight")
    from moelens.backends.nnsight import NNsightMoE

    model = moelens.HookedMoE.from_pretrained("moelens/mixtral-tiny")  # nnsight needs a real tokenizer
    traced = NNsightMoE.from_hf(model.hf_model, tokenizer=model.tokenizer)
    for name, fn in (("blocks.0.moe.hook_out", _nan), ("blocks.2.moe.hook_router_logits", _inf)):
        with pytest.raises(NonFiniteError, match=name):
            traced.run_with_hooks(IDS, [(name, fn)])


def _effects(m):
    return moelens.driver_effects(m, IDS, progress=False)


SEMANTICS = [
    ("(None, fn) hook pair", lambda m, t: m.run_with_hooks(IDS, [(None, lambda x, hook: None)]), InvalidInputError, "hook target None"),
    ("Perturb sign=True", lambda m, t: Perturb(0, 1, sign=True), InterventionError, "sign=True"),
    ("Perturb sign=False", lambda m, t: Perturb(0, 1, sign=False), InterventionError, "sign=False"),
    ("Scale factor=True (refused alike)", lambda m, t: Scale(0, 1, factor=True), InterventionError, "factor=True"),
    ("Patch 1.7 on topk indices", lambda m, t: m.run_with_interventions(IDS, Patch("blocks.0.moe.hook_topk_indices", torch.full((1, 3, 2), 1.7))), InterventionError, "holds 1.7"),
    ("Patch +inf", lambda m, t: Patch("blocks.0.moe.hook_out", torch.full((32,), INF)), InterventionError, "holds inf"),
    ("Patch -inf off the router", lambda m, t: Patch("blocks.0.hook_resid_pre", torch.full((32,), -INF)), InterventionError, "holds inf"),
    ("two Forces beyond top-2", lambda m, t: m.run_with_interventions(IDS, [Force(0, [0, 1]), Force(0, [2])]), InterventionError, "Force targets 3 experts ([0, 1, 2])"),
    ("three Forces of one", lambda m, t: m.run_with_interventions(IDS, [Force(1, 0), Force(1, 1), Force(1, 2)]), InterventionError, "more than top_k=2"),
    ("top(-1)", lambda m, t: _effects(m).top(-1), InvalidInputError, "n=-1"),
    ("top(0)", lambda m, t: _effects(m).top(0), InvalidInputError, "n=0"),
    ("driver perturbation with a layer", lambda m, t: moelens.driver_effects(m, IDS, perturbation=Perturb(0, 3), progress=False), InvalidInputError, "would be ignored"),
    ("special_ids out of vocab", lambda m, t: moelens.token_triggers(m, IDS, experts=[(0, 1)], special_ids=[99999]), InvalidInputError, "99999"),
    ("special_ids negative", lambda m, t: moelens.token_triggers(m, IDS, experts=[(0, 1)], special_ids=[-1]), InvalidInputError, "-1"),
    ("loss_per_token without a loss", lambda m, t: m(IDS, loss_per_token=True), InvalidInputError, "loss_per_token=True"),
    ("generate top_p=2", lambda m, t: m.generate(IDS, 2, do_sample=True, top_p=2.0), InvalidInputError, "top_p=2.0"),
    ("generate top_k=0", lambda m, t: m.generate(IDS, 2, do_sample=True, top_k=0), InvalidInputError, "top_k=0"),
]


def test_stacked_forces_within_top_k_keep_every_forced_expert():
    model = wrapped("mixtral")
    _, cache = model.run_with_cache(IDS, "blocks.0.moe.hook_topk_indices", fwd_hooks=Force(0, 1).hooks(model) + Force(0, 3).hooks(model))
    assert sorted(cache["blocks.0.moe.hook_topk_indices"][0, 0].tolist()) == [1, 3]


def test_topk_mask_can_leave_out_padding():
    model = wrapped("mixtral")
    _, cache = model.run_with_cache(torch.tensor([[4, 5, 0, 0]]), attention_mask=torch.tensor([[1, 1, 0, 0]]))
    k, layers = model.cfg.top_k, len(model.cfg.moe_layers)
    assert int(cache.topk_mask().sum()) == layers * 4 * k  # padding positions are routed too (documented)
    assert int(cache.topk_mask(exclude_padding=True).sum()) == layers * 2 * k


def _bad_sidecar(tmp_path):
    from moelens.analysis import RoutingStats

    (tmp_path / "s.safetensors").write_bytes(b"")
    (tmp_path / "s.json").write_text("{oops")
    return RoutingStats.load(tmp_path / "s")


RAW = [
    ("hook target 5", lambda m, t: m.run_with_hooks(IDS, [(5, lambda x, hook: None)]), InvalidInputError, "hook target 5"),
    ("names_filter=3", lambda m, t: m.run_with_cache(IDS, names_filter=3), InvalidInputError, "names_filter=3"),
    ("names_filter of ints", lambda m, t: m.run_with_cache(IDS, names_filter=[1, 2]), InvalidInputError, "names_filter=[1, 2]"),
    ("fwd_hooks=5", lambda m, t: m.run_with_hooks(IDS, 5), InvalidInputError, "fwd_hooks=5"),
    ("fwd_hooks a bare name", lambda m, t: m.run_with_hooks(IDS, "blocks.0.hook_resid_pre"), InvalidInputError, "fwd_hooks='blocks.0.hook_resid_pre'"),
    ("a hook triple", lambda m, t: m.run_with_hooks(IDS, bwd_hooks=[("blocks.0.hook_resid_pre", print, 3)]), InvalidInputError, "is not a (name or predicate, fn) pair"),
    ("Ablate in bwd_hooks", lambda m, t: m.run_with_hooks(IDS, bwd_hooks=[Ablate(0, 1)]), InvalidInputError, "Ablate(layers=0"),
    ("model call inside a hook", lambda m, t: m.run_with_hooks(IDS, [("blocks.0.moe.hook_out", lambda x, hook: m(IDS))]), InvalidInputError, "called the model"),
    ("from_dict bad dtype", lambda m, t: from_dict({"type": "Patch", "hook_name": "blocks.0.moe.hook_out", "value": {"tensor": [1.0], "dtype": "floaty"}}), InterventionError, "'floaty'"),
    ("from_dict bad tensor", lambda m, t: from_dict({"type": "Patch", "hook_name": "blocks.0.moe.hook_out", "value": {"tensor": "abc"}}), InterventionError, "'abc'"),
    ("from_dict bad slice", lambda m, t: from_dict({"type": "Scale", "layers": 0, "experts": 1, "factor": 1.2, "positions": {"slice": ["a", 2, None]}}), InterventionError, "['a', 2, None]"),
    ("meta token ids", lambda m, t: m(IDS.to("meta")), InvalidInputError, "meta tensor"),
    ("complex token ids", lambda m, t: m(IDS.to(torch.complex64)), InvalidInputError, "complex64"),
    ("collect {'a': None}", lambda m, t: moelens.collect_routing_stats(m, {"a": None}, progress=False), InvalidInputError, "NoneType"),
    ("RoutingStats.load bad JSON", lambda m, t: _bad_sidecar(t), ResultFileError, "s.json"),
    ("EvalResult.load bad JSON", lambda m, t: moelens.EvalResult.load(_write(t, "r.json", "{oops")), ResultFileError, "r.json"),
    ("EvalResult.load missing", lambda m, t: moelens.EvalResult.load(t / "none.json"), ResultFileError, "none.json"),
    ("token_values words", lambda m, t: moelens.viz.token_values(["a"], ["high"]), InvalidInputError, "high"),
    ("token_records is a file", lambda m, t: moelens.collect_routing_stats(m, {"a": IDS}, token_records=_write(t, "x.csv", "x"), progress=False), InvalidInputError, "x.csv"),
    ("from_hf tokenizer a name", lambda m, t: moelens.HookedMoE.from_hf(m.hf_model, tokenizer="gpt2"), InvalidInputError, "AutoTokenizer.from_pretrained('gpt2')"),
    # the TransformerLens calls, patching and checkpoints (probed after the #21/#22 merges)
    ("generate temperature -1", lambda m, t: m.generate(IDS, 2, do_sample=True, temperature=-1.0), InvalidInputError, "temperature=-1.0"),
    ("cache.to('gpu9')", lambda m, t: m.run_with_cache(IDS)[1].to("gpu9"), InvalidInputError, "gpu9"),
    ("activation_patching clean_cache a str", lambda m, t: moelens.patching.activation_patching(m, IDS, "abc", lambda lg: lg.sum()),
     InvalidInputError, "clean_cache='abc'"),
    ("activation_patching metric=5", lambda m, t: moelens.patching.activation_patching(m, IDS, m.run_with_cache(IDS)[1], 5),
     InvalidInputError, "metric=5"),
    ("checkpoint under a file", lambda m, t: moelens.collect_routing_stats(m, {"a": IDS}, checkpoint=f"{_write(t, 'f.txt', 'x')}/sub",
                                                                           progress=False), CheckpointError, "f.txt"),
]


# non-finite values (NonFiniteError, also a FloatingPointError), silent semantics now refused, former raw errors
BY_KIND = [("non-finite", *case) for case in NONFINITE] + [("semantics", *case) for case in SEMANTICS] + [("raw", *case) for case in RAW]


@pytest.mark.parametrize(("kind", "name", "call", "error", "fragment"), BY_KIND, ids=[f"{c[0]}: {c[1]}" for c in BY_KIND])
def test_each_kind_raises_its_error_naming_the_value(tmp_path, kind, name, call, error, fragment):
    with pytest.raises(error) as info:
        call(wrapped("mixtral"), tmp_path)
    assert fragment in str(info.value), f"{kind} / {name}: {info.value}"
    assert error is not NonFiniteError or isinstance(info.value, FloatingPointError)


def test_integer_token_ids_of_any_width_are_ids():
    model = wrapped("mixtral")
    assert torch.equal(model(IDS.to(torch.uint8)), model(IDS)) and torch.equal(model(IDS.int()), model(IDS))


def test_driver_gradient_methods_through_nnsight_are_refused():
    pytest.importorskip("nnsight")
    from moelens.backends.nnsight import NNsightMoE

    model = moelens.HookedMoE.from_pretrained("moelens/mixtral-tiny")
    traced = NNsightMoE.from_hf(model.hf_model, tokenizer=model.tokenizer)
    with pytest.raises(InvalidInputError, match="method='first_order' needs backward passes, which NNsightMoE does not run"):
        moelens.driver_effects(traced, IDS, method="first_order", progress=False)


def test_a_resumed_progress_bar_counts_to_the_job_size(tmp_path, capsys, monkeypatch):
    collect = sys.modules["moelens.analysis.routing_stats.run"]
    real, calls = collect._run_batch, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # after one batch of three
        return real(*args)

    model, data, checkpoint = wrapped("mixtral"), {"a": torch.randint(3, 90, (6, 4))}, tmp_path / "ckpt"
    monkeypatch.setattr(collect, "_run_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        moelens.collect_routing_stats(model, data, batch_size=2, checkpoint=checkpoint, progress=False)
    monkeypatch.setattr(collect, "_run_batch", real)
    capsys.readouterr()
    moelens.collect_routing_stats(model, data, batch_size=2, checkpoint=checkpoint, progress=True)
    bar = capsys.readouterr().err
    assert "3/3" in bar and "4/3" not in bar, bar  # resumed at 1 of 3 batches, not 1 + 3
