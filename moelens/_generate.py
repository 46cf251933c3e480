"""``model.generate``, and hook points that fire when HF's model is called directly inside ``hooks()``.

moelens installs its torch hooks for the duration of one of its own calls (nothing is installed
between calls, so an unhooked model runs HF's forward untouched). A direct call of ``hf_model``
(its forward, or ``hf_model.generate``, which calls the forward once per step) used to run with no
hook installed: inside ``model.hooks(...)`` it fired 0 hooks, silently. Now, while a ``hooks()`` or
``intervene()`` block is open, every forward of ``hf_model`` that does not come from a moelens call
installs the hooks for itself and runs as one moelens call: a fresh call context (scratch and
``hook.ctx`` emptied after it) whose ``attention_mask`` is the mask of the positions this forward
computes.

``generate`` is HF's own ``generate`` run that way, so without hooks its output is exactly HF's
(same kernels, same KV cache), and with hooks they fire once per generated token per hook point.
With the KV cache (``use_past_kv_cache=True``, the default) the first step sees the prompt
``[batch prompt_pos ...]`` and every later step only the new token ``[batch 1 ...]``: a hook or an
intervention's ``positions=`` then indexes that chunk (``-1`` is always the newest token). With
``use_past_kv_cache=False`` each step reruns the whole sequence and positions are absolute
(slower: quadratic in the length).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import check_count, check_number
from ._tokens import TokenIds, need_tokenizer
from ._torch_hooks import own_hook
from .errors import InvalidInputError
from .hook_points import CallContext

__all__ = ["Generation"]


class Generation:
    """Mixin of :class:`~moelens.HookedMoE`: needs ``hf_model``, ``tokenizer``, ``_registry``,
    ``hooks()``, ``to_tokens``, ``to_inputs`` and ``_install(stack)``."""

    def _fire_on_direct_calls(self, stack: ExitStack) -> None:
        """For the block owning ``stack``: each forward of ``hf_model`` outside a moelens call runs
        with the hooks installed and its own call context (see the module docstring)."""
        if getattr(self, "_direct_calls_guarded", False):
            return  # an enclosing hooks() block already does it
        self._direct_calls_guarded = True
        stack.callback(setattr, self, "_direct_calls_guarded", False)
        open_steps: list[ExitStack | None] = []

        def before(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if self._registry._state.stack:  # a moelens call: it installed its own hooks
                open_steps.append(None)
                return
            step = ExitStack()
            try:
                self._install(step)
                step.enter_context(self._registry.calling(CallContext(_chunk_mask(args, kwargs))))
            except BaseException:
                step.close()
                raise
            open_steps.append(step)

        def after(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            step = open_steps.pop() if open_steps else None
            if step is not None:
                step.close()

        own_hook(stack, self.hf_model, before, pre=True, with_kwargs=True)
        own_hook(stack, self.hf_model, after, with_kwargs=True, always_call=True)
        stack.callback(lambda: [step.close() for step in open_steps if step is not None])

    @torch.no_grad()
    def generate(
        self,
        input: str | Sequence[str] | Tensor,
        max_new_tokens: int = 10,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_at_eos: bool = True,
        eos_token_id: int | None = None,
        *,
        use_past_kv_cache: bool = True,
        fwd_hooks: Sequence = (),
        interventions: Any = None,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        attention_mask: Tensor | None = None,
        return_type: str = "input",
        freq_penalty: float = 0.0,
        verbose: bool = False,
        **generate_kwargs: Any,
    ) -> str | list[str] | Tensor:
        """Continue ``input`` (a text, texts, or token ids ``[batch pos]``) by ``max_new_tokens`` tokens
        with HF's ``generate``, with ``fwd_hooks`` and ``interventions`` (and any hooks of an enclosing
        ``hooks()``/``intervene()`` block) applied at every step.

        Greedy by default (``do_sample=False``: equal to ``hf_model.generate(..., do_sample=False)``);
        ``do_sample=True`` samples with ``temperature``, ``top_k`` (None: no limit) and ``top_p``
        (None: 1.0). ``stop_at_eos`` stops a row at ``eos_token_id`` (default: the model's), and the
        finished rows are filled with the pad id. ``temperature=0`` means greedy. Batches are always
        left-padded (right-padded ids are re-aligned; ``padding_side`` is accepted for TransformerLens
        scripts and must be None or "left"). ``generate_kwargs`` go to HF's ``generate`` (e.g.
        ``repetition_penalty``); TransformerLens's ``freq_penalty`` is not offered (only 0 is accepted),
        and ``verbose`` is accepted and ignored (no progress bar).

        ``return_type="input"`` returns the kind of the input: a str (prompt + continuation, special
        tokens dropped) for a str, a list for a list, the ids ``[batch pos+new]`` for ids (they carry
        their ``.attention_mask``: 0 on left padding and after a row's EOS). "str" and "tokens" force one.

        >>> from moelens import HookedMoE
        >>> model = HookedMoE.from_pretrained("moelens/mixtral-tiny")
        >>> calls = []
        >>> out = model.generate("What is 2 + 3?", max_new_tokens=3, stop_at_eos=False,
        ...                      fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: calls.append(x.shape[1]))])
        >>> len(calls)  # once per generated token: the prompt, then one new position per step
        3
        >>> calls[1:]
        [1, 1]
        """
        if return_type not in ("input", "str", "tokens"):
            raise InvalidInputError(f"return_type={return_type!r}: pass 'input', 'str' or 'tokens'.")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InvalidInputError(f"max_new_tokens={max_new_tokens!r} must be an int >= 1.")
        if padding_side not in (None, "left"):
            raise InvalidInputError(f"padding_side={padding_side!r}: generation appends after the last column, so batches are left-padded; pass None or 'left'.")
        if freq_penalty:
            raise InvalidInputError(f"freq_penalty={freq_penalty!r} is not offered; pass HF's repetition_penalty= (e.g. 1.2) instead.")
        _check_sampling(temperature, top_k, top_p)
        if do_sample and temperature == 0:
            do_sample = False  # TransformerLens: temperature 0 is greedy
        if isinstance(input, (str, list, tuple)):
            ids, mask = self.to_tokens(input, prepend_bos, padding_side="left", return_mask=True)
        else:
            model_inputs = self.to_inputs(input, attention_mask)
            ids, mask = _left_aligned(model_inputs.input_ids, model_inputs.attention_mask, self._pad_id())
        config = self.hf_model.generation_config
        eos = eos_token_id if eos_token_id is not None else config.eos_token_id
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "use_cache": use_past_kv_cache}
        options["pad_token_id"] = self._pad_id()
        if stop_at_eos and eos is not None:
            options["eos_token_id"] = eos
        else:
            options["eos_token_id"] = None
            options["min_length"] = 0
        if do_sample:
            options.update(temperature=temperature, top_k=top_k or 0, top_p=1.0 if top_p is None else top_p)
        items = list(fwd_hooks) + ([] if interventions is None else _as_list(interventions))
        with self.hooks(items):
            out = self.hf_model.generate(input_ids=ids, attention_mask=mask, **options, **generate_kwargs)
        full_mask = torch.cat([mask, _generated_mask(out[:, ids.shape[1]:], eos if stop_at_eos else None)], dim=1)
        as_text = return_type == "str" or (return_type == "input" and isinstance(input, (str, list, tuple)))
        if not as_text:
            return TokenIds.wrap(out, full_mask)
        tokenizer = need_tokenizer(self.tokenizer, "generate(return_type='str')")
        texts = [tokenizer.decode(row[m.bool()], skip_special_tokens=True) for row, m in zip(out, full_mask, strict=True)]
        return texts[0] if isinstance(input, str) else texts

    def _pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            pad = self.hf_model.generation_config.pad_token_id
        if pad is None:
            pad = getattr(self.hf_model.config, "pad_token_id", None)
        return int(pad) if isinstance(pad, int) else 0


def _as_list(items: Any) -> list:
    return list(items) if isinstance(items, (list, tuple)) else [items]


def _chunk_mask(args: tuple, kwargs: dict) -> Tensor | None:
    """The mask ``[batch pos]`` of the positions this forward computes (the last ``pos`` columns of
    HF's mask over the cached and new positions); None when HF passed no 2-D mask."""
    tokens = kwargs.get("input_ids", args[0] if args else None)
    if tokens is None:
        tokens = kwargs.get("inputs_embeds")
    mask = kwargs.get("attention_mask")
    if tokens is None or not isinstance(mask, Tensor) or mask.ndim != 2:
        return None
    return mask[:, -tokens.shape[1]:].long()


def _left_aligned(ids: Tensor, mask: Tensor, pad: int) -> tuple[Tensor, Tensor]:
    """Move each row's real tokens to the right end (generation appends after the last column)."""
    if bool(mask[:, -1].all()):
        return ids, mask
    real = mask.bool()
    width = int(real.sum(-1).max())
    new_ids = torch.full((ids.shape[0], width), pad, dtype=ids.dtype, device=ids.device)
    new_mask = torch.zeros((ids.shape[0], width), dtype=mask.dtype, device=mask.device)
    for row in range(ids.shape[0]):
        tokens = ids[row][real[row]]
        new_ids[row, width - len(tokens):] = tokens
        new_mask[row, width - len(tokens):] = 1
    return new_ids, new_mask


def _generated_mask(generated: Tensor, eos: int | list[int] | None) -> Tensor:
    """1 on generated tokens up to and including each row's first EOS, 0 on the padding after it."""
    if eos is None:
        return torch.ones_like(generated)
    stops = torch.isin(generated, torch.tensor(eos if isinstance(eos, list) else [eos], device=generated.device))
    seen = stops.long().cumsum(-1)
    return ((seen - stops.long()) == 0).long()


def _check_sampling(temperature: Any, top_k: Any, top_p: Any) -> None:
    """Sampling settings HF would refuse late (temperature < 0) or take silently (top_p > 1, top_k 0)."""
    check_number("temperature", temperature, 0.0)  # 0 means greedy
    check_count("top_k", top_k, 1, optional=True, fix="None for no limit")
    if top_p is not None:
        check_number("top_p", top_p, 0.0)
        if not 0 < top_p <= 1:
            raise InvalidInputError(f"top_p={top_p!r} must be in (0, 1], or None for no nucleus cut.")
