"""Issue #16 item 5, threads: a HookedMoE serves one thread at a time. A call from a second thread
while another thread is inside a call (or a hooks()/intervene() block) raises ConcurrentUseError;
it never runs with the other thread's hooks. Threads that take turns are fine."""

from __future__ import annotations

import threading

import torch

from moelens import Ablate, ConcurrentUseError, HookedMoE, Scale
from moelens.testing import tiny_model

IDS = torch.tensor([[4, 5, 6], [7, 8, 9]])


def _model() -> HookedMoE:
    return HookedMoE.from_hf(tiny_model("mixtral"))  # its own model: the threads must not disturb other tests


def _in_thread(fn, name: str) -> list:
    """Run ``fn`` in a named thread; returns [result] or [exception]."""
    out: list = []

    def target():
        try:
            out.append(fn())
        except Exception as error:  # noqa: BLE001 (handed back to the test)
            out.append(error)

    thread = threading.Thread(target=target, name=name)
    thread.start()
    thread.join(30)
    return out


def test_a_call_from_another_thread_during_a_call_is_refused():
    model = _model()
    clean = model(IDS)
    inside, release = threading.Event(), threading.Event()

    def slow_hook(x, hook):
        inside.set()
        assert release.wait(10)

    thread = threading.Thread(target=lambda: model.run_with_hooks(IDS, [("blocks.0.moe.hook_out", slow_hook)]), name="first")
    thread.start()
    assert inside.wait(10)
    try:
        refused = _in_thread(lambda: model(IDS), "second")
    finally:
        release.set()
        thread.join(10)
    assert isinstance(refused[0], ConcurrentUseError) and isinstance(refused[0], RuntimeError)
    message = str(refused[0])
    assert "in use by thread 'first'" in message and "thread 'second' called it too" in message and "its own model" in message
    assert torch.equal(model(IDS), clean)  # the lock was released: the next call runs, bit-exact


def test_an_open_intervene_block_refuses_other_threads():
    model = _model()
    with model.intervene(Ablate(0, 1)):
        refused = _in_thread(lambda: model.run_with_cache(IDS), "reader")
        inside = model(IDS)  # the owning thread nests calls freely
    assert isinstance(refused[0], ConcurrentUseError)
    assert torch.equal(inside, model.run_with_interventions(IDS, Ablate(0, 1)))
    for verb in (lambda: model.add_hook("blocks.0.moe.hook_out", print), model.reset_hooks):
        with model.intervene(Ablate(0, 1)):
            assert isinstance(_in_thread(verb, "other")[0], ConcurrentUseError)


def test_threads_taking_turns_get_their_own_results():
    model = _model()
    expected = model.run_with_interventions(IDS, Scale(1, 2, factor=3.0))
    got = _in_thread(lambda: model.run_with_interventions(IDS, Scale(1, 2, factor=3.0)), "turn")
    assert torch.equal(got[0], expected)


def test_two_threads_hammering_one_model_never_see_each_others_interventions():
    """The issue's reproduction (97 of 100 forwards leaked): every call either returns exactly its own
    single-threaded result or raises ConcurrentUseError; none returns a mixed result."""
    model = _model()
    jobs = {"ablate": Ablate(0, [1, 2]), "scale": Scale(1, [0, 3], factor=4.0, on="weights")}
    expected = {name: model.run_with_interventions(IDS, item) for name, item in jobs.items()}
    outcomes: dict[str, list] = {name: [] for name in jobs}
    start = threading.Barrier(len(jobs))

    def worker(name):
        start.wait(10)
        for _ in range(40):
            try:
                outcomes[name].append(model.run_with_interventions(IDS, jobs[name]))
            except ConcurrentUseError:
                outcomes[name].append("refused")

    threads = [threading.Thread(target=worker, args=(name,)) for name in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for name, results in outcomes.items():
        assert len(results) == 40
        mixed = [r for r in results if not isinstance(r, str) and not torch.equal(r, expected[name])]
        assert not mixed, f"{name}: {len(mixed)} of 40 calls ran with the other thread's intervention"
    assert all(not hp.fns for hp in model.hook_dict.values())
