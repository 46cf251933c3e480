"""Loading a checkpoint for :meth:`moelens.HookedMoE.from_pretrained`: zoo names, hub ids, folders."""

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ModelLoadError

__all__ = ["load_hf"]


def load_hf(
    name_or_path: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None, **hf_kwargs: Any
) -> tuple[nn.Module, Any]:
    """The HF causal LM (eval mode, on ``device``) and its tokenizer (None if it has none).

    >>> load_hf("nobody/no-such-moe")  # offline here
    Traceback (most recent call last):
    ...
    moelens.errors.ModelLoadError: could not load 'nobody/no-such-moe': it is not a moelens zoo name ...
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_zoo(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **hf_kwargs)
    except OSError as error:
        raise ModelLoadError(
            f"could not load {name_or_path!r}: it is not a moelens zoo name ({_zoo_names()}), not a local "
            f"folder with a config.json, and the hub did not answer ({error.__class__.__name__}: "
            f"{str(error).splitlines()[0][:200]}). Check the name, or download it first while online."
        ) from error
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        warnings.warn(f"no tokenizer could be loaded for {name_or_path!r} ({error}); pass token ids.", stacklevel=3)
        tokenizer = None
    if device is not None:
        model = model.to(device)
    model.eval()
    return model, tokenizer


def resolve_zoo(name: str) -> str:
    """A zoo name ``moelens/<name>`` maps to its packaged folder (it never goes to the hub); any other
    name is returned as it is.

    >>> resolve_zoo("mistralai/Mixtral-8x7B-v0.1")
    'mistralai/Mixtral-8x7B-v0.1'
    >>> resolve_zoo("moelens/mixtral-tiny").endswith("mixtral-tiny")
    True
    """
    from .zoo import ZOO_PREFIX
    from .zoo import resolve as zoo_resolve

    path = zoo_resolve(name)
    if path is not None:
        return str(path)
    if isinstance(name, str) and name.startswith(ZOO_PREFIX) and not Path(name).exists():
        raise ModelLoadError(
            f"{name!r} is not an installed moelens zoo model; installed: {_zoo_names()}. Reinstall moelens, or "
            f"train it with `python -m zoo_training.train` from a clone of the repository (see the zoo cards)."
        )
    return name


def _zoo_names() -> str:
    from .zoo import ZOO_MODELS, ZOO_PREFIX
    from .zoo import resolve as zoo_resolve

    installed = [ZOO_PREFIX + short for short in ZOO_MODELS if zoo_resolve(ZOO_PREFIX + short) is not None]
    return ", ".join(installed) or "none"
