"""The JSON form of intervention fields (``Intervention.to_dict`` / ``from_dict``).

>>> import torch
>>> decode_field(encode_field(torch.tensor([1, 2]))).tolist(), decode_field(encode_field(slice(1, None, None)))
([1, 2], slice(1, None, None))
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .errors import InterventionError

__all__ = ["decode_field", "encode_field"]


def encode_field(value: Any) -> Any:
    """A field value as JSON: tensors as lists with their dtype, slices as [start, stop, step], tuples as lists."""
    if isinstance(value, Tensor):
        return {"tensor": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, slice):
        return {"slice": [value.start, value.stop, value.step]}
    if isinstance(value, tuple):
        return list(value)
    return value


def decode_field(value: Any) -> Any:
    """Inverse of :func:`encode_field`, with an error naming what is not a tensor, dtype or slice."""
    if isinstance(value, dict) and "tensor" in value:
        dtype = getattr(torch, str(value.get("dtype", "float32")), None)
        if not isinstance(dtype, torch.dtype):
            raise InterventionError(f"from_dict: dtype {value.get('dtype')!r} is not a torch dtype (e.g. 'float32', 'int64').")
        try:
            return torch.tensor(value["tensor"], dtype=dtype)
        except (TypeError, ValueError, RuntimeError) as error:
            raise InterventionError(f"from_dict: tensor {str(value['tensor'])[:40]!r} is not a nested list of numbers "
                                    f"({type(error).__name__}); write it with to_dict().") from None
    if isinstance(value, dict) and "slice" in value:
        bounds = value["slice"]
        if not isinstance(bounds, list) or len(bounds) != 3 or any(b is not None and (isinstance(b, bool) or not isinstance(b, int)) for b in bounds):
            raise InterventionError(f"from_dict: slice {bounds!r} must be [start, stop, step] of ints or None.")
        return slice(*bounds)
    return value
