"""Zoo: the training script runs on a tiny config, and the committed zoo models load offline."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from moelens import zoo  # noqa: E402
from zoo_training import evaluate as ev  # noqa: E402
from zoo_training import train as zoo_train  # noqa: E402

EXPECTED = {"mixtral-tiny": ("MixtralForCausalLM", "mixtral"),
            "qwen2moe-tiny": ("Qwen2MoeForCausalLM", "qwen2_moe"),
            "olmoe-deep": ("OlmoeForCausalLM", "olmoe")}
CLASSES = {"mixtral": "MixtralForCausalLM", "qwen2moe": "Qwen2MoeForCausalLM", "olmoe": "OlmoeForCausalLM"}
# (layers at least, routed experts, top-k) of each packaged model
SHAPES = {"mixtral-tiny": (4, 8, 2), "qwen2moe-tiny": (4, 8, 2), "olmoe-deep": (8, 16, 4)}
# the olmoe-deep recipe's flags, on the tiny config
DEEP_FLAGS = ["--arith-split", "hash", "--sentiment-dev", "16", "--select-on-dev", "--dev-every", "0",
              "--ema", "0.9", "--word-dropout", "0.2", "--mix", "sentiment=0.4,arith=0.4,mmlu=0.1,gsm8k=0.05,math=0.05"]


@pytest.mark.needs_data("sst2/train.jsonl")
@pytest.mark.parametrize("arch", ["mixtral", "qwen2moe", "olmoe"])
def test_training_script_tiny(tmp_path, arch, data_dir):
    out = tmp_path / arch
    extra = DEEP_FLAGS if arch == "olmoe" else []
    log = zoo_train.main(["--data", str(data_dir), "--arch", arch, "--out", str(out), "--steps", "3", "--tiny", "--seed", "0", *extra])
    assert log["steps"] == 3
    for f in ("config.json", "model.safetensors", "tokenizer.json", "train_log.json", "README.md"):
        assert (out / f).exists(), f
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == CLASSES[arch]
    ids = tok("Review: fine\nSentiment:", return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == tok.bos_token_id
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape[-1] == model.config.vocab_size
    saved = json.loads((out / "train_log.json").read_text())
    assert len(saved["loss_curve"]) >= 1
    assert "ci95" in saved["sentiment_sst2_validation"]
    assert len(saved["expert_load_per_layer"]) == 2
    items = saved["sentiment_sst2_validation"]["items"]
    assert len(items) == 16 and items.count("1") == saved["sentiment_sst2_validation"]["correct"]
    assert (out / "README.md").read_text().count(saved["reproduce_command"]) == 1
    if arch == "olmoe":  # dev checks at every step: steps 0..3; the best one is what was saved
        assert [h["step"] for h in saved["dev_history"]] == [0, 1, 2, 3]
        assert saved["selected_checkpoint"]["step"] in (0, 1, 2, 3)
        assert "arithmetic_units_heldout_exact_match" in saved


@pytest.mark.needs_data("sst2/train.jsonl")
def test_init_from_continues_from_the_saved_model(tmp_path, data_dir):
    from safetensors.torch import load_file

    first, second = tmp_path / "first", tmp_path / "second"
    zoo_train.main(["--data", str(data_dir), "--arch", "olmoe", "--out", str(first), "--steps", "2", "--tiny", "--no-eval"])
    # lr 0: the continued run must save exactly the weights it started from (AdamW's decay scales with lr)
    log = zoo_train.main(["--data", str(data_dir), "--arch", "olmoe", "--out", str(second), "--steps", "1", "--tiny", "--no-eval",
                          "--init-from", str(first), "--lr", "0", "--heads", "1"])
    assert log["args"]["heads"] == 2  # the architecture comes from the saved config (tiny: 2 heads), not the flags
    assert f"--init-from {first}" in log["reproduce_command"]
    before, after = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # a positive lr moves them
    log = zoo_train.main(["--data", str(data_dir), "--arch", "olmoe", "--out", str(second), "--steps", "2", "--tiny", "--no-eval",
                          "--init-from", str(first), "--lr", "0.01", "--warmup", "1"])
    after = load_file(second / "model.safetensors")
    assert not all(torch.equal(before[k], after[k]) for k in before)


def test_dev_selection_score_prefers_sst2_above_the_arithmetic_floor():
    from zoo_training.loop import dev_selection_score

    a = zoo_train.parse_args(["--arch", "olmoe", "--out", "x"])
    assert dev_selection_score(a, {"sst2_dev": 0.7, "arith_dev": 0.9}) == pytest.approx(1.6)
    a = zoo_train.parse_args(["--arch", "olmoe", "--out", "x", "--select-metric", "sst2_dev",
                              "--arith-dev-floor", "0.8"])
    assert dev_selection_score(a, {"sst2_dev": 0.7, "arith_dev": 0.9}) == 0.7
    assert dev_selection_score(a, {"sst2_dev": 0.9, "arith_dev": 0.5}) is None  # below the floor: never kept
    assert dev_selection_score(a, {"sst2_dev": 0.75}) == 0.75  # no arithmetic dev set: no floor to apply


def test_wilson_ci():
    lo, hi = ev.wilson_ci(50, 100)
    assert lo < 0.5 < hi
    lo, hi = ev.wilson_ci(600, 872)
    assert 0.65 < lo < 0.6881 < hi < 0.72


def test_resolve():
    assert zoo.resolve("not-a-zoo-model") is None
    assert zoo.resolve("moelens/does-not-exist") is None
    assert zoo.DEFAULT_MODEL.startswith("moelens/")
    assert zoo.DEFAULT_MODEL[len("moelens/"):] in zoo.ZOO_MODELS


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_zoo_model_loads_offline(name):
    path = zoo.resolve(f"moelens/{name}")
    assert path is not None and path.is_dir(), f"zoo model {name} is not packaged"
    cls_name, model_type = EXPECTED[name]
    model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert type(model).__name__ == cls_name
    assert model.config.model_type == model_type
    n_exp = getattr(model.config, "num_local_experts", None) or model.config.num_experts
    min_layers, experts, top_k = SHAPES[name]
    assert n_exp == experts and model.config.num_experts_per_tok == top_k
    assert model.config.num_hidden_layers >= min_layers and model.config.tie_word_embeddings
    if name.startswith("qwen2moe"):
        assert model.config.shared_expert_intermediate_size > 0
        assert hasattr(model.model.layers[0].mlp, "shared_expert")
    assert (path / "model.safetensors").stat().st_size <= 20 * 1024 * 1024
    for w in ev.SENTIMENT_LABEL_WORDS:
        assert len(tok(w, add_special_tokens=False)["input_ids"]) == 1
    model.eval()
    with torch.no_grad():
        out = model(**tok(["Review: a lovely film\nSentiment:"], return_tensors="pt"),
                    output_router_logits=True)
    assert len(out.router_logits) == model.config.num_hidden_layers
    log = json.loads((path / "train_log.json").read_text())
    s = log["sentiment_sst2_validation"]
    assert s["n"] == 872
    assert s["ci95"][0] > 0.5, s
    assert (path / "README.md").exists()
    assert all(isinstance(layer, list) for layer in log["dead_experts_per_layer"])
    if name == "olmoe-deep":  # issue #15: no dead expert, a second skill well above chance
        assert not any(log["dead_experts_per_layer"]), log["dead_experts_per_layer"]
        assert log["arithmetic_heldout_exact_match"]["ci95"][0] > 0.5


def test_arithmetic_splits_are_disjoint_and_hold_out_what_they_say():
    from zoo_training import data as zd

    problems = [(a, b, op) for op in "+-" for a in range(100) for b in range(100) if op == "+" or b <= a]
    roles = {p: zd.arith_role(*p, split="hash") for p in problems}
    # the units rule holds out, for +, exactly the problems whose units digits are equal
    assert {p for p in problems if p[2] == "+" and roles[p] == "units"} == {
        p for p in problems if p[2] == "+" and p[0] % 10 == p[1] % 10}
    share = {r: sum(v == r for v in roles.values()) / len(problems) for r in ("test", "dev", "units")}
    assert 0.07 < share["test"] < 0.11 and 0.07 < share["dev"] < 0.11 and 0.09 < share["units"] < 0.11
    # the first models' split is untouched: its train/test roles are the units rule alone
    assert all((zd.arith_role(*p, split="units") == "test") == zd.units_heldout(*p) for p in problems)
    rng = __import__("random").Random(0)
    for split in zd.ARITH_SPLITS:
        train = zd.arithmetic_problems(rng, 500, heldout=False, split=split)
        test = zd.arithmetic_problems(rng, 200, heldout=True, split=split)
        assert not {q for q, _ in train} & {q for q, _ in test}
    for q, a in zd.arithmetic_problems(rng, 50, "dev", split="hash"):
        x, op, y = q[len("What is "):-1].split()
        assert int(a) == (int(x) + int(y) if op == "+" else int(x) - int(y)) >= 0
        assert zd.hash_bucket(int(x), int(y), op) == 1


def test_encoded_loss_weights_of_prompt_answer_and_eos():
    from zoo_training import data as zd

    class Tok:  # one token per character, BOS = 1, EOS = 2
        eos_token_id = 2

        def __call__(self, texts, add_special_tokens=True):
            return {"input_ids": [([1] if add_special_tokens else []) + [ord(c) for c in t] for t in texts]}

    [(toks, w)] = zd.encode_examples(Tok(), [("abc", "d")], answer_weight=5.0)
    assert toks == [1, 97, 98, 99, 100, 2] and w == [0.0, 1.0, 1.0, 1.0, 5.0, 1.0]
    [(_, w)] = zd.encode_examples(Tok(), [("abc", "d")], answer_weight=5.0, prompt_weight=0.0)
    assert w == [0.0, 0.0, 0.0, 0.0, 5.0, 1.0]  # the label alone (and EOS) is trained


def test_packer_rows_and_block_causal_mask():
    from zoo_training import data as zd

    encoded = {"a": [([1, 5, 6, 2], [0.0, 1.0, 1.0, 1.0])], "b": [([1, 7, 8, 9, 10, 11, 2], [0.0] + [3.0] * 6)]}
    packer = zd.Packer(encoded, {"a": 0.5, "b": 0.5}, seq_len=12, seed=0, word_dropout={"b": (1.0, 2, 2)})
    ids, mask, wts, pos, doc = packer.batch(3, pad_id=0)
    for row in range(3):
        n = int(mask[row].sum())
        assert ids[row, n:].eq(0).all() and wts[row, n:].eq(0).all() and doc[row, n:].eq(-1).all()
        # word dropout 1.0 keeps only the 2 head and 2 tail tokens of "b": [1, 7, 11, 2]
        assert 7 in ids[row].tolist() or 5 in ids[row].tolist()
        assert not {8, 9, 10} & set(ids[row].tolist())
        starts = (pos[row, :n] == 0).nonzero().flatten().tolist()
        assert all(int(ids[row, s]) == 1 for s in starts)  # every example starts with BOS at position 0
    m = zd.block_causal_mask(doc)
    assert m.shape == (3, 1, 12, 12)
    d = doc[0]
    for i in range(12):
        for j in range(12):
            assert bool(m[0, 0, i, j]) == (j <= i and bool(d[i] == d[j]))
