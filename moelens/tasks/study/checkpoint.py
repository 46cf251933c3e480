"""The study's evaluations, one step each of a :class:`~moelens.runner.SweepRunner`.

A study is a fixed sequence of :func:`~moelens.evaluate` calls (baseline, then every set x recipe x
factor and its random draws, per stage). With ``checkpoint=`` each finished evaluation is saved at
once (its tensors, and its JSON state as bytes, in the runner's one checkpoint file), so a study
interrupted after an hour reruns only what was left. The fingerprint holds the model, every record
of every split and every argument that changes an evaluation; a different study refuses an
unfinished checkpoint and supersedes a finished one (:mod:`moelens.checkpoints`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from moelens.runner import SweepRunner

from ..evaluate import EvalResult

__all__ = ["StudyEvaluations", "records_digest"]


def records_digest(records: Any) -> str | None:
    """SHA-256 of a split's records (order included), or None when there is no split.

    >>> records_digest([{"id": 1, "text": "a"}]) == records_digest([{"text": "a", "id": 1}])
    True
    """
    if records is None:
        return None
    return hashlib.sha256(json.dumps(records, sort_keys=True, default=str).encode()).hexdigest()


class StudyEvaluations:
    """Call with a zero-argument function that runs one evaluation: the ``i``-th call returns the
    saved result of step ``i`` when an earlier run of the same study finished it, else runs it (and
    saves it when ``checkpoint`` is a folder). :meth:`close` ends the progress bar.

    >>> import tempfile
    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
    >>> one = EvalResult("sst2", ["a"], [1], [1], [True], None, None, None, [])
    >>> with tempfile.TemporaryDirectory() as d:
    ...     first = StudyEvaluations(model, d, {"study": 1}, total=2, progress=False)
    ...     _ = first(lambda: one); first.close()  # interrupted after one of two
    ...     again = StudyEvaluations(model, d, {"study": 1}, total=2, progress=False)
    ...     ran = []
    ...     _ = again(lambda: ran.append(1)); _ = again(lambda: ran.append(2) or one); again.close()
    >>> ran  # the first evaluation came from the checkpoint
    [2]
    """

    def __init__(self, model: Any, checkpoint: str | Path | None, fingerprint: dict[str, Any], total: int, progress: bool = True):
        self.runner = SweepRunner("reweighting_study", total, model=model, checkpoint=checkpoint, fingerprint=fingerprint,
                                  progress=progress, desc="study", unit="eval")
        self.saved = self.runner.resume() or {}
        self.calls = 0
        self._steps = iter(self.runner)

    def __call__(self, run: Callable[[], EvalResult]) -> EvalResult:
        step, self.calls = self.calls, self.calls + 1
        if step < self.runner.done:
            meta = json.loads(bytes(self.saved[f"{step}.state"].tolist()).decode())
            tensors = {name.split(".", 1)[1]: t for name, t in self.saved.items() if name.startswith(f"{step}.") and name != f"{step}.state"}
            return EvalResult._from_state(tensors, meta)
        next(self._steps)  # the runner's step ``step``: moves the bar past the previous one
        result = run()
        if self.runner.state is not None:
            tensors, meta = result._state()
            self.saved.update({f"{step}.{name}": tensor for name, tensor in tensors.items()})
            self.saved[f"{step}.state"] = torch.tensor(list(json.dumps(meta, default=str).encode()), dtype=torch.uint8)
            self.runner.save(self.saved, step)
        else:
            self.runner.done = step + 1
        return result

    def close(self) -> None:
        """Finish the progress bar (the steps left, if any, stay for the next run)."""
        self._steps.close()
