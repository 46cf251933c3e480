"""One runner for every long sweep: its steps (batches), its progress bar and its checkpoint.

A sweep is ``n_steps`` steps; after each, the caller saves the tensors that hold everything done so
far, and a rerun of the same call skips the finished steps. The fingerprint always holds the model
(:func:`~moelens.checkpoints.model_fingerprint`), the inputs' digest, every argument and the identity
of any callable; see :mod:`moelens.checkpoints` for what happens when it differs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from moelens.checkpoints import Checkpoint, model_fingerprint

if TYPE_CHECKING:
    from moelens.backends.protocol import MoEBackend

__all__ = ["SweepRunner"]


class SweepRunner:
    """Steps ``0..n_steps-1`` of the sweep ``what`` with a progress bar of ``units_per_step`` units
    per step and, when ``checkpoint`` (a folder) is given, a :class:`~moelens.checkpoints.Checkpoint`
    at ``checkpoint/file`` keyed on ``{"sweep": what, "model": model_fingerprint(model), **fingerprint}``.

    >>> import tempfile, torch
    >>> from moelens import HookedMoE
    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     run = SweepRunner("demo", 3, model=model, checkpoint=d, fingerprint={"inputs": "x"}, progress=False)
    ...     total = run.resume() or {"sum": torch.zeros(1)}
    ...     for step in run:
    ...         total["sum"] += step
    ...         run.save(total, step)
    ...     again = SweepRunner("demo", 3, model=model, checkpoint=d, fingerprint={"inputs": "x"}, progress=False)
    ...     saved = again.resume()
    >>> saved["sum"].item(), again.done, list(again)
    (3.0, 3, [])
    """

    def __init__(
        self,
        what: str,
        n_steps: int,
        *,
        model: MoEBackend,
        checkpoint: str | Path | None = None,
        fingerprint: dict[str, Any] | None = None,
        file: str = "state.safetensors",
        progress: bool = True,
        desc: str | None = None,
        unit: str = "batch",
        units_per_step: int = 1,
    ):
        self.what, self.n_steps, self.done = what, n_steps, 0
        self.progress, self.desc, self.unit, self.units_per_step = progress, desc or what, unit, units_per_step
        self.state = None
        if checkpoint is not None:
            full = {"sweep": what, "model": model_fingerprint(model), "n_steps": n_steps, **(fingerprint or {})}
            self.state = Checkpoint(Path(checkpoint) / file, full, what)
        self._bar = None

    def resume(self) -> dict[str, Tensor] | None:
        """The tensors saved by an earlier run of this very call (and :attr:`done` set to its finished
        steps), or None (no checkpoint, none saved, or a finished one of another call)."""
        found = self.state.resume() if self.state is not None else None
        if found is None:
            return None
        tensors, extras = found
        done = extras.get("steps_done")
        if isinstance(done, bool) or not isinstance(done, int) or not 0 < done <= self.n_steps:
            raise self.state.refuse(f"does not hold the state of this {self.what} run (steps_done={done!r})")
        self.done = done
        return tensors

    def refuse(self, why: str) -> Exception:
        """The error naming this run's checkpoint file (for a saved state of the wrong shape)."""
        return self.state.refuse(why)

    def __iter__(self) -> Iterator[int]:
        """The steps still to run; the bar moves by ``units_per_step`` per step (or by :meth:`update`)."""
        from tqdm.auto import tqdm  # tqdm pulls in nothing heavy, but only sweeps need it

        units = self.units_per_step
        self._bar = tqdm(total=self.n_steps * units, initial=self.done * units, disable=not self.progress,
                         desc=self.desc, unit=self.unit, dynamic_ncols=True)
        try:
            for step in range(self.done, self.n_steps):
                yield step
                self._bar.update(max(0, (step + 1) * units - self._bar.n))
        finally:
            self._bar.close()
            self._bar = None

    def update(self, n: int = 1) -> None:
        """Move the bar by ``n`` units inside a step."""
        if self._bar is not None:
            self._bar.update(n)

    def note(self, text: str) -> None:
        """Show ``text`` after the bar (e.g. which inputs run now)."""
        if self._bar is not None:
            self._bar.set_postfix_str(text)

    def save(self, tensors: dict[str, Tensor], step: int) -> None:
        """Record that steps ``0..step`` are finished and ``tensors`` hold their results; the last
        step marks the checkpoint complete."""
        self.done = step + 1
        if self.state is not None:
            self.state.save(tensors, complete=self.done == self.n_steps, steps_done=self.done)
