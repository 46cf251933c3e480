"""Issue #16, table-driven: bad input -> the expected MoelensError subclass with a message fragment that
names the value or the fix; and a NaN reaching a router is not blamed on an innocent hook."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

from moelens import Force, HookedMoE, Patch, Perturb, Scale, collect_routing_stats, driver_effects
from moelens.errors import CheckpointError, HookShapeError, InterventionError, InvalidInputError
from moelens.interventions import from_dict
from moelens.testing import tiny_model

from ..models import wrapped

IDS = torch.tensor([[4, 5, 6]])

CASES = [
    # (name, call, expected type, message fragment)
    ("empty row of token ids", lambda m: m(torch.zeros(1, 0, dtype=torch.long)), InvalidInputError, "(1, 0) hold no token"),
    ("no rows of token ids", lambda m: m(torch.zeros(0, 3, dtype=torch.long)), InvalidInputError, "(0, 3) hold no token"),
    ("mask given as a list", lambda m: m(IDS, attention_mask=[[1, 1, 1]]), InvalidInputError, "got list"),
    ("fractional mask", lambda m: m(IDS, attention_mask=torch.tensor([[1.0, 0.5, 1.0]])), InvalidInputError, "only 0 (padding) and 1"),
]


@pytest.mark.parametrize(("name", "call", "kind", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_the_expected_error(name, call, kind, fragment):
    with pytest.raises(kind) as info:
        call(wrapped("mixtral"))
    assert fragment in str(info.value), f"{name}: {info.value}"


def test_nan_reaching_a_router_is_not_reported_as_an_in_place_edit():
    model = wrapped("mixtral")
    nan_resid = lambda x, hook: torch.full_like(x, float("nan"))  # noqa: E731
    seen = []
    model.check_finite = False  # issue #23: NaN raises by default; opted out, the router must still not blame a hook
    try:
        model.run_with_hooks(
            IDS,
            fwd_hooks=[("blocks.0.hook_resid_pre", nan_resid), ("blocks.0.moe.hook_router_scores", lambda x, hook: seen.append(1))],
        )
    finally:
        model.check_finite = True
    assert seen == [1]


# -- the command line: exit status 2, one line on stderr, no traceback --------------------------------------

CLI_CASES = [
    ("JSONL without text", {"x.jsonl": '{"label": 1}\n'}, ["--data", "d={x.jsonl}"], "has no 'text' field"),
    ("non-string text", {"x.jsonl": '{"text": 3}\n'}, ["--data", "d={x.jsonl}"], "'text' that is an int"),
    ("JSON array line", {"x.jsonl": '["a", "b"]\n'}, ["--data", "d={x.jsonl}"], "is a JSON list, not an object"),
    ("MMLU row without choices", {"x.jsonl": '{"text": "q?", "domain": "mmlu"}\n'}, ["--data", "d={x.jsonl}"], "without a 'choices' list"),
    ("--out is a file", {"f": "x"}, ["--out", "{f}"], "is a file, not a folder"),
    ("--out cannot be created", {"f": "x"}, ["--out", "{f}/sub"], "cannot be created"),
    ("two --data for one domain", {}, ["--data", "a=sst2", "--data", "a=mmlu"], "gives domain 'a' twice"),
    ("--model ''", {}, ["--model", ""], "--model '' is empty"),
    ("--device tpu", {}, ["--device", "tpu"], "--device='tpu' is not a torch device"),
    ("--device cuda:99", {}, ["--device", "cuda:99"], "--device='cuda:99'"),
]


@pytest.mark.parametrize(("name", "files", "args", "fragment"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, name, files, args, fragment):
    from typer.testing import CliRunner

    from moelens.cli import app

    paths = {}
    for file, text in files.items():
        (tmp_path / file).write_text(text)
        paths[file] = str(tmp_path / file)
    for file, path in paths.items():
        args = [a.replace("{" + file + "}", path) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, ["stats", *args])
    assert result.exit_code == 2, f"{name}: {result.output}"
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("moelens: error:") and fragment in lines[0], result.output
    assert "Traceback" not in result.output


def _file(tmp_path):
    (tmp_path / "f").write_text("x")
    return tmp_path / "f"


MORE_CASES = [
    ("slice past the end selects nothing", lambda m, t: m.run_with_interventions(IDS, Scale(0, 1, positions=slice(100, 200))), InterventionError, "selects no position"),
    ("empty position list", lambda m, t: m.run_with_interventions(IDS, Scale(0, 1, positions=[])), InterventionError, "positions=[] selects nothing"),
    ("NaN magnitude", lambda m, t: Perturb(0, 1, magnitude=float("nan")), InterventionError, "magnitude=nan must be a finite"),
    ("max_length=0", lambda m, t: collect_routing_stats(m, {"a": IDS}, max_length=0, progress=False), InvalidInputError, "max_length=0"),
    ("float batch_size", lambda m, t: collect_routing_stats(m, {"a": IDS}, batch_size=2.5, progress=False), InvalidInputError, "batch_size=2.5"),
    ("domains as a list", lambda m, t: collect_routing_stats(m, [IDS], progress=False), InvalidInputError, "got list"),
    ("checkpoint is a file", lambda m, t: collect_routing_stats(m, {"a": IDS}, checkpoint=_file(t), progress=False), CheckpointError, "is a file"),
]


@pytest.mark.parametrize(("name", "call", "kind", "fragment"), MORE_CASES, ids=[c[0] for c in MORE_CASES])
def test_more_bad_input_raises_the_expected_error(tmp_path, name, call, kind, fragment):
    with pytest.raises(kind) as info:
        call(wrapped("mixtral"), tmp_path)
    assert fragment in str(info.value), f"{name}: {info.value}"


def _meta(x, hook):
    return torch.empty_like(x, device="meta")


def _same_expert_twice(x, hook):
    return torch.zeros_like(x)  # expert 0 in every slot


BLOCK_IN = torch.zeros(1, 3, 32)
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="'cuda' is a valid device on this machine")

EVEN_MORE_CASES = [
    # positions: ints only, and a selection that selects nothing is an error like positions=100
    ("position 100 on 3 tokens", lambda m: m.run_with_interventions(IDS, Scale(0, 1, positions=100)), InterventionError, "position 100 is outside the sequence; valid positions are 0..2"),
    ("float position in a list", lambda m: Scale(0, 1, positions=[1.5]), InterventionError, "every position must be an int; got 1.5"),
    ("string position", lambda m: Scale(0, 1, positions="1"), InterventionError, "positions='1': pass an int"),
    ("float slice bound", lambda m: Force(0, 1, positions=slice(0.5, 2)), InterventionError, "slice bounds must be ints or None; got 0.5"),
    ("empty slice", lambda m: m.run_with_interventions(IDS, Scale(0, 1, positions=slice(2, 2))), InterventionError, "selects no position of a row with 3 tokens"),
    # run_moe_block
    ("float64 into run_moe_block", lambda m: m.run_moe_block(0, BLOCK_IN.double()), InvalidInputError, "moe_input has dtype torch.float64 but this model's residual stream (hook_in) is torch.float32"),
    ("run_moe_block mask shape", lambda m: m.run_moe_block(0, BLOCK_IN, attention_mask=torch.ones(1, 2)), InvalidInputError, "attention_mask has shape (1, 2) but the inputs have shape (1, 3)"),
    ("run_moe_block mask list", lambda m: m.run_moe_block(0, BLOCK_IN, attention_mask=[[1, 1, 1]]), InvalidInputError, "got list"),
    # hooks
    ("hook returns a meta tensor", lambda m: m.run_with_hooks(IDS, [("blocks.0.moe.hook_out", _meta)]), HookShapeError, "returned a meta tensor"),
    ("meta tensor into the router", lambda m: m.run_with_hooks(IDS, [("blocks.1.moe.hook_router_logits", _meta)]), HookShapeError, "returned a meta tensor"),
    ("same expert in two top-k slots", lambda m: m.run_with_hooks(IDS, [("blocks.0.moe.hook_topk_indices", _same_expert_twice)]), HookShapeError, "put expert 0 in two top-k slots of one token"),
    # devices
    ("run_with_cache device tpu", lambda m: m.run_with_cache(IDS, device="tpu"), InvalidInputError, "device='tpu' is not a torch device"),
    ("run_with_cache device cuda:99", lambda m: m.run_with_cache(IDS, device="cuda:99"), InvalidInputError, "device='cuda:99'"),
    ("run_with_cache device 3.5", lambda m: m.run_with_cache(IDS, device=3.5), InvalidInputError, "device=3.5 is not a torch device"),
    pytest.param("run_with_cache device cuda", lambda m: m.run_with_cache(IDS, device="cuda"), InvalidInputError, "CUDA is not available", marks=NO_CUDA),
    ("from_pretrained device tpu", lambda m: HookedMoE.from_pretrained("moelens/mixtral-tiny", device="tpu"), InvalidInputError, "device='tpu' is not a torch device"),
    ("from_pretrained device cuda:7", lambda m: HookedMoE.from_pretrained("moelens/mixtral-tiny", device="cuda:99"), InvalidInputError, "device='cuda:99'"),
    pytest.param("from_pretrained device cuda", lambda m: HookedMoE.from_pretrained("moelens/mixtral-tiny", device="cuda"), InvalidInputError, "CUDA is not available", marks=NO_CUDA),
    # from_dict
    ("from_dict unknown key", lambda m: from_dict({"type": "Scale", "layers": 0, "experts": 1, "factr": 2.0}), InterventionError, "unknown key(s) ['factr']"),
    ("from_dict missing key", lambda m: from_dict({"type": "Perturb", "layers": 0}), InterventionError, "missing key(s) ['experts']"),
    ("from_dict not a dict", lambda m: from_dict(["Scale", 0, 1]), InterventionError, "takes a dict written by to_dict(); got list"),
    # numbers of the interventions
    ("negative magnitude", lambda m: Perturb(0, 1, magnitude=-2.0), InterventionError, "magnitude=-2.0 is negative"),
    ("negative factor", lambda m: Scale(0, 1, factor=-0.5), InterventionError, "factor=-0.5 is negative"),
    ("NaN factor", lambda m: Scale(0, 1, factor=float("nan")), InterventionError, "factor=nan must be a finite number"),
    ("bool factor", lambda m: Scale(0, 1, factor=True), InterventionError, "factor=True must be a finite number"),
    ("NaN patch", lambda m: Patch("blocks.0.moe.hook_out", torch.full((32,), float("nan"))), InterventionError, "holds NaN"),
    # analyses' arguments
    ("driver_effects max_length=0", lambda m: driver_effects(m, IDS, max_length=0, progress=False), InvalidInputError, "max_length=0 must be an int >= 1"),
    ("driver_effects float batch_size", lambda m: driver_effects(m, IDS, batch_size=2.5, progress=False), InvalidInputError, "batch_size=2.5"),
    ("driver_effects empty ids", lambda m: driver_effects(m, torch.zeros(1, 0, dtype=torch.long), progress=False), InvalidInputError, "hold no token"),
    ("collect float max_length", lambda m: collect_routing_stats(m, {"a": IDS}, max_length=2.5, progress=False), InvalidInputError, "max_length=2.5"),
    ("collect ids without rows", lambda m: collect_routing_stats(m, {"a": torch.zeros(0, 3, dtype=torch.long)}, progress=False), InvalidInputError, "must be [n pos] with n >= 1; got (0, 3)"),
    ("collect ids [1, 0]", lambda m: collect_routing_stats(m, {"a": torch.zeros(1, 0, dtype=torch.long)}, progress=False), InvalidInputError, "hold no token"),
    ("collect mask given as a list", lambda m: collect_routing_stats(m, {"a": (IDS, [[1, 1, 1]])}, progress=False), InvalidInputError, "got list"),
]


@pytest.mark.parametrize(("name", "call", "kind", "fragment"), EVEN_MORE_CASES, ids=[c.values[0] if hasattr(c, "marks") else c[0] for c in EVEN_MORE_CASES])
def test_even_more_bad_input_raises_the_expected_error(name, call, kind, fragment):
    with pytest.raises(kind) as info:
        call(wrapped("mixtral"))
    assert fragment in str(info.value), f"{name}: {info.value}"


# -- inputs longer than the model's positions; one truncation default for both analyses ------------------


class CharTokenizer:
    """One id per character (enough of a tokenizer for moelens), with HF's truncation arguments."""

    pad_token, eos_token = "<pad>", "<eos>"

    def __call__(self, texts, return_tensors="pt", padding=True, truncation=False, max_length=None):
        rows = [[3 + (ord(c) % 90) for c in text][: max_length if truncation else None] for text in texts]
        width = max(len(r) for r in rows)
        return {
            "input_ids": torch.tensor([r + [0] * (width - len(r)) for r in rows]),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        }


def _with_chars() -> HookedMoE:
    return HookedMoE.from_hf(tiny_model("mixtral"), tokenizer=CharTokenizer())  # 128 positions


@pytest.mark.parametrize("given", ["token ids", "text"])
def test_inputs_longer_than_the_models_positions_warn(given):
    model = _with_chars()
    inputs = torch.randint(3, 90, (1, 130)) if given == "token ids" else "x" * 130
    with pytest.warns(UserWarning, match="longer than the 128 positions this model was trained for"):
        model(inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(inputs[:, :128] if given == "token ids" else "x" * 128)  # at the limit: no warning


def test_driver_effects_and_statistics_truncate_texts_alike():
    default = {f: inspect.signature(f).parameters["max_length"].default for f in (driver_effects, collect_routing_stats)}
    assert set(default.values()) == {256}, default
    model = _with_chars()
    long, cut = "the cat sat on the mat", "the cat"
    quiet = {"progress": False, "skip_unchanged": False}
    assert torch.equal(driver_effects(model, [long], max_length=7, **quiet).effect, driver_effects(model, [cut], **quiet).effect)
    stats = [collect_routing_stats(model, {"a": [text]}, max_length=length, progress=False) for text, length in ((long, 7), (cut, None))]
    assert torch.equal(stats[0].activation_rate, stats[1].activation_rate) and stats[0].n_tokens.tolist() == [[7, 7]]
