"""TransformerLens's token verbs on a wrapped model: ``to_tokens``, ``to_str_tokens``, ``to_string``,
``to_single_token``.

``to_tokens`` returns ``Int[Tensor, "batch pos"]``, as TransformerLens does. A padded batch also
needs its attention mask, and moelens never guesses padding from token ids (an id equal to the pad
id may be a real token, e.g. when pad is EOS). So the tensor ``to_tokens`` returns is a
:class:`TokenIds`: an ordinary ``LongTensor`` that also carries ``.attention_mask``, which every
entry point reads when no ``attention_mask=`` is passed. Any tensor derived from it (a slice, a
``torch.cat``, arithmetic) is a plain tensor again, and a plain tensor without a mask means "no
padding". ``.to()``, ``.cpu()``, ``.cuda()``, ``.clone()`` and ``.detach()`` keep the mask. To hold the
mask explicitly instead, ask ``to_tokens(..., return_mask=True)`` for ``(ids, mask)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .errors import InvalidInputError
from .inputs import check_max_length

__all__ = ["TokenIds", "TokenMethods"]


class TokenIds(Tensor):
    """Token ids ``[batch pos]`` that carry their ``attention_mask`` ``[batch pos]`` (1 on real tokens).

    >>> from moelens import HookedMoE
    >>> model = HookedMoE.from_pretrained("moelens/mixtral-tiny")
    >>> tokens = model.to_tokens(["Hello world", "Hi"])
    >>> tokens.attention_mask.tolist()
    [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    >>> type(tokens[0]).__name__  # derived tensors are plain: no mask means no padding
    'Tensor'
    """

    attention_mask: Tensor | None = None

    @staticmethod
    def wrap(ids: Tensor, attention_mask: Tensor) -> TokenIds:
        tokens = ids.as_subclass(TokenIds)
        tokens.attention_mask = attention_mask
        return tokens

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        # Run every op as on a plain tensor, so that nothing downstream (HF's embedding, arithmetic)
        # turns into a TokenIds; only same-content copies keep the mask.
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
        source = args[0] if args else None
        if (
            func in _KEEPS_MASK
            and isinstance(source, TokenIds)
            and source.attention_mask is not None
            and isinstance(out, Tensor)
            and out.shape == source.shape
        ):
            return TokenIds.wrap(out, source.attention_mask.to(out.device))
        return out

    def __repr__(self, *, tensor_contents=None) -> str:
        return repr(self.view_as(self))  # prints as the plain tensor it behaves as

    def __reduce_ex__(self, protocol):
        # Saved and pickled as a plain tensor: torch.load(weights_only=True) would refuse a subclass.
        with torch._C.DisableTorchFunctionSubclass():
            return self.as_subclass(Tensor).__reduce_ex__(protocol)


_KEEPS_MASK = {Tensor.to, Tensor.cpu, Tensor.cuda, Tensor.clone, Tensor.detach, Tensor.contiguous}


def attached_mask(inputs: Any) -> Tensor | None:
    """The mask a :class:`TokenIds` carries (None for anything else)."""
    return inputs.attention_mask if isinstance(inputs, TokenIds) else None


class TokenMethods:
    """The token verbs, for any wrapper with ``tokenizer``, ``device`` and ``cfg`` (``n_ctx``)."""

    def to_tokens(
        self,
        input: str | Sequence[str],
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        truncate: bool = True,
        move_to_device: bool = True,
        *,
        max_length: int | None = None,
        return_mask: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Token ids ``Int[Tensor, "batch pos"]`` of a text or a list of texts (padded), on the model's device.

        ``prepend_bos``: None uses the tokenizer's own special tokens (what HF's ``tokenizer(text)``
        gives, so the ids equal HF's); True puts ``bos_token`` first (and no other special token);
        False adds no special token. ``padding_side``: "right" or "left" (default: the tokenizer's).
        ``truncate`` keeps the first ``cfg.n_ctx`` tokens; ``max_length`` keeps fewer. ``move_to_device=False``
        leaves the ids on the CPU.

        The result carries ``.attention_mask`` (see :class:`TokenIds`), so a padded batch can be
        passed back to any entry point as it is; ``return_mask=True`` returns ``(ids, mask)``.

        >>> from moelens import HookedMoE
        >>> model = HookedMoE.from_pretrained("moelens/mixtral-tiny")
        >>> model.to_tokens("Hello world")
        tensor([[   1,   42, 1026,   81, 1402]])
        >>> model.to_tokens("Hello world", prepend_bos=False).tolist()
        [[42, 1026, 81, 1402]]
        >>> ids, mask = model.to_tokens(["Hello world", "Hi"], padding_side="left", return_mask=True)
        >>> mask.tolist()
        [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
        """
        tokenizer = need_tokenizer(self.tokenizer, "to_tokens")
        texts = [input] if isinstance(input, str) else input
        if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
            raise InvalidInputError(
                f"to_tokens takes a str or a non-empty list of str; got {type(input).__name__}. Token ids need no to_tokens."
            )
        check_max_length(max_length)
        side = _padding_side(padding_side, tokenizer)
        limit = max_length if max_length is not None else (self.cfg.n_ctx if truncate else None)
        if prepend_bos is None and side == getattr(tokenizer, "padding_side", "right"):
            # the tokenizer's own call, as for texts given to model(...): the same ids by construction
            truncation = {"truncation": True, "max_length": limit} if limit is not None else {}
            encoded = tokenizer(list(texts), return_tensors="pt", padding=True, **truncation)
            ids, mask = encoded["input_ids"].long(), encoded["attention_mask"].long()
        else:
            ids, mask = _padded(_encode(tokenizer, list(texts), prepend_bos, limit), side, getattr(tokenizer, "pad_token_id", None))
        if ids.shape[1] == 0 or bool((mask.sum(-1) == 0).any()):
            empty = [texts[i] for i in range(len(texts)) if ids.shape[1] == 0 or not bool(mask[i].any())]
            raise InvalidInputError(f"texts {empty!r} give no token; drop them, or pass prepend_bos=True.")
        if move_to_device:
            ids, mask = ids.to(self.device), mask.to(self.device)
        return (ids, mask) if return_mask else TokenIds.wrap(ids, mask)

    def to_str_tokens(self, input: str | Sequence[str] | Tensor, prepend_bos: bool | None = None,
                      padding_side: str | None = None) -> list[str] | list[list[str]]:
        """Readable token strings: byte-level and SentencePiece markers (``Ġ``, ``▁``) become the
        characters they stand for, and the tokens of a row concatenate to its decoded text.

        A text or a 1-D / one-row tensor gives ``list[str]``; a list of texts or a batch of rows gives
        ``list[list[str]]``, without padding (read from ``.attention_mask`` when the ids carry one).

        >>> from moelens import HookedMoE
        >>> model = HookedMoE.from_pretrained("moelens/mixtral-tiny")
        >>> model.to_str_tokens("Hello world")
        ['<s>', 'H', 'ell', 'o', ' world']
        >>> model.to_str_tokens(["Hi", "Hello world"], prepend_bos=False)
        [['H', 'i'], ['H', 'ell', 'o', ' world']]
        """
        from .viz.tokens import readable_tokens

        tokenizer = need_tokenizer(self.tokenizer, "to_str_tokens")
        if isinstance(input, (list, tuple)) and input and all(isinstance(t, int) for t in input):
            input = torch.tensor(list(input), dtype=torch.long)  # one row of ids
        if isinstance(input, (str, list, tuple)):
            ids, mask = self.to_tokens(input, prepend_bos, padding_side, return_mask=True)
            rows = [readable_tokens(tokenizer, row[m.bool()].tolist()) for row, m in zip(ids, mask, strict=True)]
            return rows[0] if isinstance(input, str) else rows
        rows_ids = _rows(input, "to_str_tokens")
        rows = [readable_tokens(tokenizer, row) for row in rows_ids]
        return rows[0] if _single(input) else rows

    def to_string(self, tokens: Tensor | Sequence[int]) -> str | list[str]:
        """Decode token ids: a 1-D tensor (or a list of ints) or a one-row batch gives a str, a batch
        ``[batch pos]`` a list of str. Special tokens are kept; padding (when the ids carry a mask) is dropped.

        >>> from moelens import HookedMoE
        >>> model = HookedMoE.from_pretrained("moelens/mixtral-tiny")
        >>> model.to_string(model.to_tokens("Hello world"))
        '<s>Hello world'
        >>> model.to_string([42, 1026, 81, 1402])
        'Hello world'
        """
        tokenizer = need_tokenizer(self.tokenizer, "to_string")
        if isinstance(tokens, (list, tuple)) and all(isinstance(t, int) for t in tokens):
            tokens = torch.tensor(list(tokens), dtype=torch.long)
        texts = [tokenizer.decode(row, clean_up_tokenization_spaces=False) for row in _rows(tokens, "to_string")]
        return texts[0] if _single(tokens) else texts

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token (no special token added).

        >>> from moelens import HookedMoE
        >>> model = HookedMoE.from_pretrained("moelens/mixtral-tiny")
        >>> model.to_single_token(" world")
        1402
        >>> model.to_single_token("Hello")
        Traceback (most recent call last):
        ...
        moelens.errors.InvalidInputError: 'Hello' is 3 tokens (['H', 'ell', 'o']), not one; to_single_token needs a string that is exactly one token: pick one of those, or use to_tokens(..., prepend_bos=False) for several.
        """
        from .viz.tokens import readable_tokens

        tokenizer = need_tokenizer(self.tokenizer, "to_single_token")
        if not isinstance(string, str):
            raise InvalidInputError(f"to_single_token takes a str; got {type(string).__name__}.")
        ids = tokenizer(string, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = readable_tokens(tokenizer, ids)
            raise InvalidInputError(
                f"{string!r} is {len(ids)} tokens ({pieces}), not one; to_single_token needs a string that is exactly "
                "one token: pick one of those, or use to_tokens(..., prepend_bos=False) for several."
            )
        return int(ids[0])


def need_tokenizer(tokenizer: Any, verb: str) -> Any:
    if tokenizer is None:
        raise InvalidInputError(
            f"{verb} needs a tokenizer, and this model has none; wrap it with "
            "HookedMoE.from_hf(model, tokenizer=AutoTokenizer.from_pretrained(...))."
        )
    return tokenizer


def _padding_side(padding_side: str | None, tokenizer: Any) -> str:
    side = padding_side if padding_side is not None else getattr(tokenizer, "padding_side", "right")
    if side not in ("left", "right"):
        raise InvalidInputError(f"padding_side={padding_side!r}: pass 'left', 'right' or None (the tokenizer's).")
    return side


def _padded(rows: list[list[int]], side: str, pad: int | None) -> tuple[Tensor, Tensor]:
    """Ids and mask ``[batch width]`` of unpadded rows, padded on ``side`` with ``pad`` (0 if None)."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad if pad is not None else 0, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def _encode(tokenizer: Any, texts: list[str], prepend_bos: bool | None, limit: int | None) -> list[list[int]]:
    """One id list per text, unpadded. None keeps the tokenizer's special tokens and its truncation
    (which keeps them), so the ids are what ``tokenizer(texts, truncation=...)`` gives."""
    if prepend_bos is None:
        truncation = {"truncation": True, "max_length": limit} if limit is not None else {}
        return [list(row) for row in tokenizer(texts, **truncation)["input_ids"]]
    rows = [list(row) for row in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    if prepend_bos:
        if tokenizer.bos_token_id is None:
            raise InvalidInputError("prepend_bos=True but this tokenizer has no bos_token; pass prepend_bos=False or None.")
        rows = [[tokenizer.bos_token_id, *row] for row in rows]
    return [row[:limit] for row in rows] if limit is not None else rows


def _rows(tokens: Any, verb: str) -> list[list[int]]:
    """The id lists of a 1-D or 2-D integer tensor (padding dropped when it carries a mask)."""
    if not isinstance(tokens, Tensor) or tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.ndim not in (1, 2):
        shown = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise InvalidInputError(f"{verb} takes token ids: an integer tensor [pos] or [batch pos], or a list of int; got {shown}.")
    mask = attached_mask(tokens)
    with torch._C.DisableTorchFunctionSubclass():
        ids = tokens.reshape(-1, tokens.shape[-1]).cpu()
    if mask is None:
        return [row.tolist() for row in ids]
    return [row[m.bool()].tolist() for row, m in zip(ids, mask.reshape(ids.shape).cpu(), strict=True)]


def _single(tokens: Any) -> bool:
    return isinstance(tokens, str) or (isinstance(tokens, Tensor) and (tokens.ndim == 1 or tokens.shape[0] == 1))
