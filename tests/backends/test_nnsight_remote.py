"""The remote path without a network: nnsight's transport replaced by a local stand-in server.

The request is built and serialised by nnsight's own ``RemoteBackend._serialize``; the stand-in
server deserialises it with every non-installed module (moelens included) hidden, as on NDIF, runs
it against its own copy of the model, and returns the saved values through ``torch.save``. A trace
that closed over an object it cannot ship fails in that deserialisation.
"""

from __future__ import annotations

import io

import nnsight
import pytest
import torch
from nnsight.intervention.backends.local import LocalSimulationBackend
from nnsight.intervention.backends.remote import RemoteBackend
from nnsight.modeling import huggingface as nnsight_hf
from nnsight.schema.config import CONFIG
from nnsight.schema.request import RequestModel
from nnsight.tracing.tracer import _saves

from moelens.backends.nnsight import NNsightMoE
from moelens.errors import BackendError
from moelens.interventions import Ablate, Perturb
from moelens.loading import resolve_zoo

ZOO = "moelens/mixtral-tiny"
SECRET = "ndif-test-key-do-not-print"


@pytest.fixture
def ndif(monkeypatch):
    """NDIF stand-in: the model is served, a key is configured, requests go to a local server."""
    server = NNsightMoE.from_pretrained(ZOO)  # the server's own loaded copy of the checkpoint
    sent: list[dict] = []

    def transport(self, request, tracer):
        blob = self._serialize(tracer)  # nnsight's own serialiser, as a real request
        sent.append({"model_key": request.model_key, "bytes": len(blob), "api_key": self.api_key})
        hider = LocalSimulationBackend(None)
        hidden = hider._hide_local_modules()  # the server has no moelens: it must travel by value
        try:
            restored = RequestModel.deserialize(blob, server.nn_model._remoteable_persistent_objects(), self.compress)
        finally:
            hider._restore(hidden)
        restored.execute(restored.info.code)
        saved = {k: v for k, v in restored.info.frame.f_locals.items() if id(v) in _saves()}
        buffer = io.BytesIO()
        torch.save(saved, buffer)  # what travels back
        sent[-1]["returned"] = buffer.getbuffer().nbytes
        return torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)

    monkeypatch.setattr(RemoteBackend, "request", transport)
    monkeypatch.setattr(nnsight, "is_model_running", lambda *args, **kwargs: True)
    monkeypatch.setattr(CONFIG.API, "APIKEY", SECRET)
    monkeypatch.setitem(nnsight_hf._ID_CACHE, resolve_zoo(ZOO), ZOO)  # the hub would canonicalise the id
    return sent


def test_remote_cache_and_interventions_equal_the_local_run(ndif):
    local = NNsightMoE.from_pretrained(ZOO)
    remote = NNsightMoE.from_pretrained(ZOO, remote=True)
    assert next(remote.hf_model.parameters()).device.type == "meta"  # no weights on the client
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])
    ref_logits, ref = local.run_with_cache(ids)
    logits, cache = remote.run_with_cache(ids)
    assert len(ndif) == 1 and ndif[0]["model_key"].startswith("nnsight.modeling.transformers.TransformersModel:")
    assert ndif[0]["api_key"] == SECRET  # from nnsight's configuration, not from us
    assert torch.equal(logits, ref_logits)
    assert set(cache) == set(ref) and all(torch.equal(cache[name], ref[name]) for name in ref)
    for intervention in (Ablate(1, torch.tensor([0, 3])), [Perturb("all", 2, magnitude=4.0), Ablate(0, 1, mode="zero")]):
        assert torch.equal(remote.run_with_interventions(ids, intervention), local.run_with_interventions(ids, intervention))
    assert len(ndif) == 3  # one round trip per call, whatever the number of layers and targets


def test_remote_refuses_an_unserved_model_before_sending(ndif, monkeypatch):
    monkeypatch.setattr(nnsight, "is_model_running", lambda *args, **kwargs: False)
    with pytest.raises(BackendError, match="not served on NDIF.*remote=False") as caught:
        NNsightMoE.from_pretrained(ZOO, remote=True)
    assert SECRET not in str(caught.value) and ndif == []


def test_remote_without_an_api_key_says_how_to_set_one(ndif, monkeypatch):
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    with pytest.raises(BackendError, match="NDIF_API_KEY"):
        NNsightMoE.from_pretrained(ZOO, remote=True)


def test_unreachable_service_is_a_clear_error(ndif, monkeypatch):
    def down(*args, **kwargs):
        raise ConnectionError(f"no route ({SECRET})")

    monkeypatch.setattr(nnsight, "is_model_running", down)
    with pytest.raises(BackendError, match="remote=False") as caught:
        NNsightMoE.from_pretrained(ZOO, remote=True)
    assert SECRET not in str(caught.value)


def test_routing_stats_of_a_remote_model_are_summed_on_the_client(ndif):
    from moelens import collect_routing_stats

    local = NNsightMoE.from_pretrained(ZOO)
    remote = NNsightMoE.from_pretrained(ZOO, remote=True)
    texts = {"a": ["one short text", "and a second one"], "b": ["numbers 1 2 3 4 5"]}
    ref = collect_routing_stats(local, texts, progress=False)
    got = collect_routing_stats(remote, texts, progress=False)
    assert len(ndif) == 2  # one round trip per batch
    assert torch.equal(got.cwas(), ref.cwas()) and torch.equal(got.n_tokens, ref.n_tokens)


def test_from_model_checks_readiness_too(ndif, monkeypatch):
    asked = []
    monkeypatch.setattr(nnsight, "is_model_running", lambda name, *args, **kwargs: asked.append(name) or False)
    local = NNsightMoE.from_pretrained(ZOO)
    with pytest.raises(BackendError, match="not served"):
        NNsightMoE.from_model(local.nn_model, remote=True)
    assert asked and asked[0].endswith("mixtral-tiny")


def test_task_evaluation_of_a_remote_model_equals_the_local_run(ndif):
    """moelens.evaluate ships its interventions with each request: one round trip per batch (per
    generated token for free answers), the same scores and texts as the local run."""
    import moelens

    local = NNsightMoE.from_pretrained(ZOO)
    remote = NNsightMoE.from_pretrained(ZOO, remote=True)
    records = [{"id": str(i), "text": t, "label": y} for i, (t, y) in enumerate([("a gem .", 1), ("dull .", 0), ("pure joy", 1)])]
    cut = [Ablate("all", 0)]
    ref = moelens.evaluate(local, "sst2", data=records, interventions=cut, batch_size=2, progress=False)
    got = moelens.evaluate(remote, "sst2", data=records, interventions=cut, batch_size=2, progress=False)
    assert len(ndif) == 2 and torch.equal(got.scores, ref.scores) and got.predictions == ref.predictions
    # Only the last position's logits come back: [2 1 d_vocab] float32, not [2 pos d_vocab].
    assert all(request["returned"] < 2 * remote.cfg.d_vocab * 4 + 4096 for request in ndif)
    assert not torch.equal(ref.scores, moelens.evaluate(local, "sst2", data=records, batch_size=2, progress=False).scores)
    kwargs = dict(limit=2, interventions=cut, batch_size=2, progress=False)
    assert moelens.evaluate(remote, "arithmetic", **kwargs).outputs == moelens.evaluate(local, "arithmetic", **kwargs).outputs
    assert 3 <= len(ndif) <= 2 + moelens.tasks.get_task("arithmetic").max_new_tokens
