"""Zoo: the training script runs on a tiny config, and the committed zoo models load offline."""

from __future__ import annotations

import json
import os
import pathlib

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from moelens import zoo  # noqa: E402
from moelens.zoo import evaluate as ev  # noqa: E402
from moelens.zoo import train as zoo_train  # noqa: E402

DATA = pathlib.Path(os.environ.get("MOELENS_DATA", str(zoo_train.DEFAULT_DATA)))
EXPECTED = {"mixtral-tiny": ("MixtralForCausalLM", "mixtral"),
            "qwen2moe-tiny": ("Qwen2MoeForCausalLM", "qwen2_moe")}


@pytest.mark.skipif(not (DATA / "sst2" / "train.jsonl").exists(), reason="../shared/data not present")
@pytest.mark.parametrize("arch", ["mixtral", "qwen2moe"])
def test_training_script_tiny(tmp_path, arch):
    out = tmp_path / arch
    log = zoo_train.main(["--arch", arch, "--out", str(out), "--steps", "3", "--tiny", "--seed", "0"])
    assert log["steps"] == 3
    for f in ("config.json", "model.safetensors", "tokenizer.json", "train_log.json", "README.md"):
        assert (out / f).exists(), f
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == EXPECTED[f"{'mixtral' if arch == 'mixtral' else 'qwen2moe'}-tiny"][0]
    ids = tok("Review: fine\nSentiment:", return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == tok.bos_token_id
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape[-1] == model.config.vocab_size
    saved = json.loads((out / "train_log.json").read_text())
    assert len(saved["loss_curve"]) >= 1
    assert "ci95" in saved["sentiment_sst2_validation"]
    assert len(saved["expert_load_per_layer"]) == 2


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
    assert n_exp == 8 and model.config.num_experts_per_tok == 2
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
