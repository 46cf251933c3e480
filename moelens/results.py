"""One base for every result moelens returns: a table, a figure, a file pair, a notebook view.

A subclass states its file ``FORMAT``/``VERSION`` and implements four small methods:

- ``to_frame()`` -> ``pandas.DataFrame``: the tidy table;
- ``_draw(ax, **options)``: its main panel on a matplotlib ``Axes`` (``_figure`` may build a
  several-panel figure when no ``ax`` is given);
- ``_state()`` -> ``(tensors, meta)`` and ``_from_state(tensors, meta)``: everything it holds, as
  tensors (safetensors) and JSON-ready values, so that ``load(save(x))`` equals ``x``.

The base gives ``plot(ax=None) -> Figure`` (a ``matplotlib.figure.Figure`` built directly: pyplot's
global figure list is never touched), ``save``/``load`` (``<path>.safetensors`` + ``<path>.json``
with a format name and version; no pickle), ``_repr_html_`` (one style: the kind, the short repr,
the head of the table) and ``__repr__``. matplotlib and pandas are imported only when used.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from safetensors.torch import load_file, save_file
from torch import Tensor

from moelens.errors import ResultFileError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["Result", "frame_from_json", "frame_to_json", "load_sidecar", "new_figure", "same_state", "save_figure", "save_sidecar", "sidecar_paths"]


def sidecar_paths(path: str | Path) -> tuple[Path, Path]:
    """``x``, ``x.safetensors`` or ``x.json`` -> (``x.safetensors``, ``x.json``).

    >>> [p.name for p in sidecar_paths("out/stats.json")]
    ['stats.safetensors', 'stats.json']
    """
    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix("")
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    return path, path.with_suffix(".json")


def save_sidecar(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any], fmt: str, version: int) -> Path:
    """Write ``<path>.safetensors`` (tensors) and ``<path>.json`` (``format``, ``version``, ``meta``,
    the tensor file's name); no pickle. Returns the tensor file's path.

    >>> import tempfile, torch
    >>> with tempfile.TemporaryDirectory() as d:
    ...     written = save_sidecar(f"{d}/x", {"a": torch.ones(2)}, {"note": "hi"}, "demo", 1)
    ...     tensors, meta = load_sidecar(written, "demo", 1, "Demo")
    >>> tensors["a"].tolist(), meta["note"]
    ([1.0, 1.0], 'hi')
    """
    tensor_path, meta_path = sidecar_paths(path)
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(tensor_path))
    document = {"format": fmt, "version": version, **meta, "tensors": tensor_path.name}
    meta_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return tensor_path


def load_sidecar(path: str | Path, fmt: str, version: int, owner: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read what :func:`save_sidecar` wrote (either file's path, or the common stem), checking the
    format; raises :class:`~moelens.errors.ResultFileError` naming ``owner`` (the class reading it)."""
    tensor_path, meta_path = sidecar_paths(path)
    if not tensor_path.is_file() or not meta_path.is_file():
        raise ResultFileError(f"{owner} needs both {tensor_path} and {meta_path} (written by save()).")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise ResultFileError(f"{meta_path} is not {owner} JSON written by save() ({type(error).__name__}: {str(error)[:60]}); "
                              "write it again with save().") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt or meta.get("version") != version:
        shown = meta if not isinstance(meta, dict) else f"format={meta.get('format')!r}, version={meta.get('version')!r}"
        raise ResultFileError(f"{meta_path} is not a {fmt} v{version} file ({str(shown)[:80]}).")
    try:
        return load_file(str(tensor_path)), meta
    except Exception as error:  # safetensors raises its own SafetensorError on damaged files
        raise ResultFileError(f"{tensor_path} is damaged or not a safetensors file ({str(error)[:80]}); write it again with save().") from None


def save_figure(fig: Figure, path: str | Path | None) -> Figure:
    """Write ``fig`` to ``path`` when one is given; return it (it displays in Jupyter)."""
    if path is not None:
        fig.savefig(Path(path), dpi=120, bbox_inches="tight")
    return fig


def new_figure(figsize: tuple[float, float] = (6.0, 3.5)) -> Figure:
    """A ``matplotlib.figure.Figure`` outside pyplot (no global state; it displays in Jupyter).

    >>> import matplotlib.pyplot as plt
    >>> before = plt.get_fignums()
    >>> type(new_figure()).__name__, plt.get_fignums() == before
    ('Figure', True)
    """
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


class Result:
    """Base of every result class (module docstring). Subclasses set ``FORMAT`` and ``VERSION``.

    >>> import torch
    >>> class Ones(Result):
    ...     FORMAT, VERSION = "demo.Ones", 1
    ...     def __init__(self, x): self.x = x
    ...     def to_frame(self):
    ...         import pandas as pd
    ...         return pd.DataFrame({"x": self.x.tolist()})
    ...     def _draw(self, ax): ax.plot(self.x.numpy())
    ...     def _state(self): return {"x": self.x}, {}
    ...     @classmethod
    ...     def _from_state(cls, tensors, meta): return cls(tensors["x"])
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     back = Ones.load(Ones(torch.ones(3)).save(f"{d}/ones"))
    >>> same_state(back, Ones(torch.ones(3))), type(back.plot()).__name__, "<table" in back._repr_html_()
    (True, 'Figure', True)
    """

    FORMAT: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    FIGSIZE: ClassVar[tuple[float, float]] = (6.0, 3.5)

    # -- what a subclass implements ---------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        raise NotImplementedError(f"{type(self).__name__} has no to_frame()")

    def _draw(self, ax: Axes, **options: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no plot()")

    def _state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")

    @classmethod
    def _from_state(cls, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Result:
        raise NotImplementedError(f"{cls.__name__} cannot be loaded")

    def _figure(self, **options: Any) -> Figure:
        """The whole figure when ``plot()`` gets no ``ax`` (default: the main panel alone)."""
        fig = new_figure(self._figsize())
        self._draw(fig.add_subplot(), **options)
        return fig

    def _figsize(self) -> tuple[float, float]:
        return self.FIGSIZE

    # -- what every result gets -------------------------------------------------------------------
    def plot(self, ax: Axes | str | Path | None = None, path: str | Path | None = None, **options: Any) -> Figure:
        """Draw on ``ax`` (its main panel), or on a new ``Figure``; returns the Figure and writes it
        to ``path`` when given. pyplot's global state is never touched. (For one release a path as
        the first argument still means ``path=``, as the old ``plot(path)`` did.)"""
        if isinstance(ax, (str, Path)):  # the old plot(path) signature
            ax, path = None, ax
        if ax is None:
            fig = self._figure(**options)
        else:
            self._draw(ax, **options)
            fig = ax.figure
        return save_figure(fig, path)

    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` (tensors) and ``<path>.json`` (format, version, the rest);
        :meth:`load` reads them back. Returns the tensor file's path."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tensors, meta = self._state()
        return save_sidecar(path, tensors, meta, self.FORMAT, self.VERSION)

    @classmethod
    def load(cls, path: str | Path) -> Result:
        """Read what :meth:`save` wrote (either file's path, or the common stem)."""
        tensors, meta = load_sidecar(path, cls.FORMAT, cls.VERSION, cls.__name__)
        try:
            return cls._from_state(tensors, meta)
        except (KeyError, IndexError, TypeError, ValueError) as error:  # a field missing or of the wrong kind
            raise ResultFileError(f"{sidecar_paths(path)[1]} is not a complete {cls.__name__} file ({type(error).__name__}: "
                                  f"{str(error)[:80]}); write it again with save().") from None

    def _html_table(self) -> pd.DataFrame:
        """The rows shown in notebooks (default: the first 10 of :meth:`to_frame`)."""
        return self.to_frame().head(10)

    def _repr_html_(self) -> str:
        """One box per result (the style of :mod:`moelens.viz.notebook`): the kind, the short repr and
        the head of the table; no image or script, so it shows in any notebook, offline."""
        rows = self._html_table().to_html(index=False, float_format="{:.4g}".format, na_rep="", border=0)
        return (f"<div class='moelens-repr'><b>{type(self).__name__}</b><p><code>{html.escape(repr(self))}</code></p>"
                f"{rows}</div>")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def frame_to_json(frame: pd.DataFrame) -> dict[str, Any]:
    """A table as JSON-ready ``{"columns", "data", "dtypes"}`` (for a result's metadata).

    >>> import pandas as pd
    >>> frame = pd.DataFrame({"a": [1, 2], "b": [0.5, float("nan")], "c": ["x", None]})
    >>> back = frame_from_json(frame_to_json(frame))
    >>> back.equals(frame), back.dtypes.tolist() == frame.dtypes.tolist()
    (True, True)
    """
    split = frame.to_dict(orient="split")
    return {"columns": [str(c) for c in split["columns"]], "data": split["data"], "dtypes": [str(t) for t in frame.dtypes]}


def frame_from_json(data: dict[str, Any]) -> pd.DataFrame:
    """The table :func:`frame_to_json` wrote, with its column dtypes."""
    import pandas as pd

    frame = pd.DataFrame(data["data"], columns=data["columns"])
    return frame.astype(dict(zip(data["columns"], data["dtypes"], strict=True))) if len(data["columns"]) else frame


def same_state(a: Result, b: Result) -> bool:
    """True when two results hold the same tensors (bit for bit, NaN equal to NaN) and metadata."""
    import torch

    (ta, ma), (tb, mb) = a._state(), b._state()
    if type(a) is not type(b) or set(ta) != set(tb):
        return False
    same = all(ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape and bool(torch.equal(
        ta[k].nan_to_num(0.125) if ta[k].is_floating_point() else ta[k],
        tb[k].nan_to_num(0.125) if tb[k].is_floating_point() else tb[k])) for k in ta)
    return same and _json_equal(ma, mb)


def _json_equal(a: Any, b: Any) -> bool:
    import math

    def norm(x: Any) -> Any:
        if isinstance(x, float) and math.isnan(x):
            return "NaN"
        if isinstance(x, dict):
            return {str(k): norm(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [norm(v) for v in x]
        return x

    return json.dumps(norm(a), sort_keys=True, default=str) == json.dumps(norm(b), sort_keys=True, default=str)
