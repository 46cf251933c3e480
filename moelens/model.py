"""HookedMoE: a HuggingFace MoE causal LM, wrapped in place, with named routing hook points."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import listed
from ._finite import check_output, edit_points
from ._generate import Generation
from ._interception import StopForward, build_hook_points
from ._intervention_methods import InterventionMethods
from ._kernels import warn_if_kernels_hide_hooks
from ._loss import check_return_type, shaped_output
from ._primitives import AnalysisPrimitives
from ._tokens import TokenMethods
from ._torch_hooks import own_hook, remove_installed_hooks
from ._validate import check_device
from .architectures import ArchitectureSpec, find_moe_layers, resolve, spec_for_model
from .cache import ActivationCache, metric_gradients, no_op_hook
from .config import MoEConfig
from .errors import InvalidInputError
from .hook_points import (
    NO_GRADIENT,
    CallContext,
    HookFn,
    HookPoint,
    HookRegistry,
    NameFilter,
    expand,
)
from .inputs import (
    ModelInputs,
    layer_range,
    prepare_inputs,
    prepare_residual,
    warn_if_too_long,
)
from .loading import load_hf
from .weights import WeightMethods

__all__ = ["HookedMoE", "MoEConfig"]

FwdHooks = Sequence[tuple[str | Callable[[str], bool], HookFn]]
BwdHooks = FwdHooks


class HookedMoE(TokenMethods, Generation, WeightMethods, InterventionMethods, AnalysisPrimitives, nn.Module):
    """An HF Mixture-of-Experts causal LM with TransformerLens-style hook points on its routing.

    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
    >>> model.cfg.n_experts, model.cfg.top_k
    (4, 2)
    >>> logits, cache = model.run_with_cache(torch.tensor([[1, 2, 3]]))
    >>> cache.topk_mask().shape  # [moe_layer batch pos n_experts]
    torch.Size([2, 1, 3, 4])

    Threads: a model serves one thread at a time. Hooks, interventions and the state of a call are
    the model's, not a thread's, so while one thread is inside a call (or a ``hooks()`` /
    ``intervene()`` block) a call from another thread raises :class:`~moelens.ConcurrentUseError`
    instead of running with the first thread's hooks. Give each thread its own model, or serialise
    the calls with a ``threading.Lock``; calls from several threads one after another are fine.
    """

    resumes_from_residual = True  # run_with_interventions takes start_at_layer= (moelens.backends.protocol)

    def __init__(self, hf_model: nn.Module, tokenizer: Any = None, spec: ArchitectureSpec | None = None):
        super().__init__()
        self.hf_model = hf_model  # registered as a submodule: .to()/.eval() reach it; weights are not copied
        self.tokenizer = tokenizer
        self.spec = spec or spec_for_model(hf_model)
        self.layers: nn.ModuleList = resolve(hf_model, self.spec.layers)
        self.final_norm: nn.Module = resolve(hf_model, self.spec.final_norm)
        self.cfg = MoEConfig.of(hf_model.config, self.spec, len(self.layers), find_moe_layers(hf_model, self.spec))
        points, self._layer_hooks, self._moe_hooks, self._stream_hooks = build_hook_points(
            self.layers, self.spec, self.cfg.moe_layers, self.cfg.n_experts, hf_model.get_input_embeddings(), self.final_norm
        )
        self._registry = HookRegistry(points)
        # use_kernels alone is no reason to warn (transformers sets it whenever `kernels` is installed)
        hooked = [h.layer for h in self._layer_hooks] + [m for h in self._moe_hooks for m in (h.block, h.router, h.experts, h.shared)]
        warn_if_kernels_hide_hooks(hf_model, [m for m in hooked if m is not None])
        self._lm_head: nn.Module | None = hf_model.get_output_embeddings()
        self._routers: dict[int, nn.Module] = {
            layer: hooks.router for layer, hooks in zip(self.cfg.moe_layers, self._moe_hooks, strict=True)
        }

    @property
    def check_finite(self) -> bool:
        """Whether a hook returning NaN/inf, or NaN/inf in the output of a hooked call, raises
        :class:`~moelens.errors.NonFiniteError` (default True; see :mod:`moelens._finite`).

        >>> from moelens.testing import tiny_model
        >>> HookedMoE.from_hf(tiny_model("mixtral")).check_finite
        True
        """
        return self._registry._state.check_finite

    @check_finite.setter
    def check_finite(self, value: bool) -> None:
        self._registry._state.check_finite = bool(value)

    @property
    def current_attention_mask(self) -> Tensor | None:
        """The mask ``[batch pos]`` of the call in progress (kept for compatibility: hook functions
        read ``hook.call.attention_mask``)."""
        return self._registry.call.attention_mask

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, model: nn.Module, tokenizer: Any = None) -> HookedMoE:
        """Wrap an HF MoE causal LM in place (no copy of the weights).

        A model in training mode is switched to eval(): routers add jitter or sample in train().
        """
        spec = spec_for_model(model)  # refuse dense or unknown models before touching anything
        if tokenizer is not None and not callable(tokenizer):
            raise InvalidInputError(f"tokenizer={tokenizer!r} is not a tokenizer; pass a loaded one, e.g. "
                                    f"AutoTokenizer.from_pretrained({tokenizer!r}), or use HookedMoE.from_pretrained(name).")
        if model.training:
            warnings.warn(
                "the model was in training mode; moelens calls model.eval() because several routers add "
                "noise or sample in training. Call model.train() afterwards to fine-tune.",
                stacklevel=2,
            )
            model.eval()
        if tokenizer is not None and tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token  # padding is masked out; its id never matters
        return cls(model, tokenizer, spec)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None, **hf_kwargs
    ) -> HookedMoE:
        """Load a checkpoint (hub id, local folder, or a zoo name ``"moelens/<name>"``) and wrap it.

        ``hf_kwargs`` go to ``AutoModelForCausalLM.from_pretrained`` (e.g. ``trust_remote_code=True``,
        ``experts_implementation="eager"``).
        """
        check_device(device)  # before the (slow) load
        model, tokenizer = load_hf(name_or_path, device, dtype, **hf_kwargs)
        return cls.from_hf(model, tokenizer)

    # -- hook management ----------------------------------------------------------------------
    @property
    def hook_names(self) -> list[str]:
        """Every hook name this model offers, in forward order."""
        return list(self._registry.points)

    @property
    def hook_dict(self) -> dict[str, HookPoint]:
        return dict(self._registry.points)

    def hook_point(self, name: str) -> HookPoint:
        """The :class:`HookPoint` of a name (raises :class:`UnknownHookError` with suggestions)."""
        return self._registry[name]

    def add_hook(self, name: str | Callable[[str], bool], fn: HookFn) -> Callable[[], None]:
        """Attach ``fn`` until :meth:`reset_hooks`; returns a function that detaches it."""
        with self._registry.exclusive():
            detach = [hp.add(fn) for hp in self._registry.select(name)]
        return lambda: [undo() for undo in detach] and None

    def reset_hooks(self) -> None:
        """Detach every hook function from every hook point, and remove every torch hook moelens
        installed on the wrapped model (even one an interrupt left behind)."""
        self._registry.remove_all()
        remove_installed_hooks(self.hf_model)

    @contextmanager
    def hooks(self, fwd_hooks: FwdHooks = (), bwd_hooks: BwdHooks = ()) -> Iterator[HookedMoE]:
        """Context manager: hooks attached inside, removed on exit, also on exceptions.

        ``fwd_hooks`` may mix ``(name or predicate, fn)`` pairs and interventions. ``bwd_hooks`` are
        ``(name or predicate, fn)`` pairs; ``fn(grad, hook)`` runs when a backward pass reaches the
        activation (also after the block has exited: the function is part of the forward's graph)
        and may return a tensor that replaces the gradient. Direct calls of ``hf_model`` inside the block
        (its forward, or ``hf_model.generate``) fire the hooks too, one call context per forward.

        >>> from moelens.testing import tiny_model
        >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
        >>> with model.hooks([("blocks.0.moe.hook_out", lambda x, hook: x * 0)]):
        ...     _ = model(torch.tensor([[1, 2]]))
        >>> model.hook_point("blocks.0.moe.hook_out").active
        False
        >>> grads = {}
        >>> def keep(grad, hook):
        ...     grads[hook.name] = grad
        >>> with model.hooks(bwd_hooks=[("blocks.1.moe.hook_topk_weights", keep)]):
        ...     logits = model(torch.tensor([[1, 2]]))
        >>> logits[0, -1, 3].backward()
        >>> grads["blocks.1.moe.hook_topk_weights"].shape  # [batch pos k]
        torch.Size([1, 2, 2])
        """
        with self._registry.attached(expand(listed(fwd_hooks, "fwd_hooks"), self), listed(bwd_hooks, "bwd_hooks")), ExitStack() as stack:
            self._fire_on_direct_calls(stack)  # hf_model(...) / hf_model.generate(...) in the block fire them too
            yield self

    # -- running ------------------------------------------------------------------------------
    def forward(
        self,
        inputs: str | list[str] | Tensor,
        *,
        attention_mask: Tensor | None = None,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        return_type: str | None = "logits",
        loss_per_token: bool = False,
    ) -> Any:
        """Logits ``[batch pos d_vocab]``, or the residual stream entering ``stop_at_layer``.

        With ``start_at_layer=L`` the input is the residual stream ``[batch pos d_model]`` entering
        layer L (pass ``attention_mask=`` if it was padded). ``return_type``: "logits", "loss" (mean
        next-token cross-entropy over real tokens, equal to HF's ``labels=`` loss; ``[batch pos-1]``
        with ``loss_per_token=True``, 0 on padding), "both" (``(logits, loss)``) or None.
        """
        check_return_type(return_type, start_at_layer, stop_at_layer, loss_per_token)
        start, stop = layer_range(self.cfg.n_layers, start_at_layer, stop_at_layer)
        model_inputs = self.to_inputs(inputs, attention_mask=attention_mask, start_at_layer=start)
        logits = self._run(model_inputs, start or 0, stop)
        return logits if stop is not None else shaped_output(logits, model_inputs, return_type, loss_per_token)

    def to_inputs(
        self, inputs: Any, attention_mask: Tensor | None = None, start_at_layer: int | None = None, max_length: int | None = None
    ) -> ModelInputs:
        """Validated model inputs (tokens, mask, positions) for texts, token ids or a residual stream.

        Texts are truncated to their first ``max_length`` tokens when it is given; token ids and residual
        streams are used as given. Inputs longer than the model's ``max_position_embeddings`` warn.
        """
        device = self.device
        if start_at_layer is not None:
            model_inputs = prepare_residual(inputs, attention_mask, self.cfg.d_model, device)
        else:
            model_inputs = prepare_inputs(inputs, attention_mask, self.tokenizer, self.cfg.d_vocab, device, max_length)
        warn_if_too_long(model_inputs.attention_mask.shape[-1], getattr(self.hf_model.config, "max_position_embeddings", None))
        return model_inputs

    def _run(self, model_inputs: ModelInputs, start: int, stop: int | None, call: CallContext | None = None) -> Tensor:
        with ExitStack() as stack:
            stack.enter_context(self._registry.exclusive())  # before any torch hook goes on a shared module
            self._install(stack, start, stop)
            stack.enter_context(self._registry.calling(call or CallContext()))
            self._registry.call.attention_mask = model_inputs.attention_mask
            try:
                out = self.hf_model(**model_inputs.hf_kwargs()).logits
            except StopForward as stopped:
                out = stopped.resid
            if self._registry._state.check_finite:  # NaN never silent (moelens._finite): hooked calls only
                check_output(out, edit_points(self._registry), "logits" if stop is None else "residual stream")
            return out

    def _install(self, stack: ExitStack, start: int = 0, stop: int | None = None) -> None:
        """Install the torch hooks the active hook points need, removed when ``stack`` closes."""
        for index, layer_hooks in enumerate(self._layer_hooks):
            if stop is not None and index > stop:
                break
            layer_hooks.install(stack, skip=index < start, stop=index == stop)
        if stop == self.cfg.n_layers:
            own_hook(stack, self.final_norm, _raise_stop, pre=True)
        for moe_hooks in self._moe_hooks:
            moe_hooks.install(stack)
        for stream_hooks in self._stream_hooks:  # after the MoE hooks: hook_mlp_out follows moe.hook_out
            stream_hooks.install(stack)

    def run_with_hooks(
        self,
        inputs: str | list[str] | Tensor,
        fwd_hooks: FwdHooks = (),
        bwd_hooks: BwdHooks = (),
        *,
        attention_mask: Tensor | None = None,
        **forward_kwargs,
    ) -> Tensor:
        """Run with ``fwd_hooks`` (pairs of name or predicate, and fn; or interventions) attached for
        this call only. ``bwd_hooks`` (pairs) fire when a backward pass through this call's output
        runs later, e.g. ``logits[0, -1, y].backward()`` (see :meth:`hooks`).

        >>> from moelens.testing import tiny_model
        >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
        >>> seen = []
        >>> logits = model.run_with_hooks(
        ...     torch.tensor([[1, 2]]), bwd_hooks=[("blocks.0.hook_resid_post", lambda g, hook: seen.append(g.shape))]
        ... )
        >>> logits.sum().backward()
        >>> seen
        [torch.Size([1, 2, 32])]
        """
        with self.hooks(fwd_hooks, bwd_hooks):
            return self(inputs, attention_mask=attention_mask, **forward_kwargs)

    def run_with_cache(
        self,
        inputs: str | list[str] | Tensor,
        names_filter: NameFilter = None,
        *,
        device: str | torch.device | None = None,
        fwd_hooks: FwdHooks = (),
        attention_mask: Tensor | None = None,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        incl_bwd: bool = False,
        metric: Callable[[Tensor], Tensor] | None = None,
        return_type: str | None = "logits",
        loss_per_token: bool = False,
    ) -> tuple[Any, ActivationCache]:
        """Run and record activations: ``names_filter`` is a name, a list, a predicate, or None (all).

        Returns ``(output, cache)``; ``return_type``/``loss_per_token`` choose the output as in :meth:`forward`.
        ``device`` moves each tensor as it is recorded (e.g. ``"cpu"`` to keep GPU memory flat).
        Opt-in hooks (``hook_expert_out``) are computed only when they are cached or hooked, so a
        filter without them is cheaper.

        ``incl_bwd=True`` also records ``d metric(output) / d activation`` as ``"<name>_grad"``
        (TransformerLens's naming) for every selected activation that carries a gradient (not
        ``hook_topk_indices`` nor ``hook_router_scores``). ``metric`` maps the output (logits, or
        the residual stream with ``stop_at_layer``) to a scalar; it defaults to the sum. Gradients
        are taken with ``torch.autograd.grad``: parameters' ``.grad`` stay as they are; an
        activation the metric does not depend on gets a zero gradient. A gradient through a router
        edit follows the family's routing rule; the top-k choice itself is piecewise constant.

        >>> from moelens.testing import tiny_model
        >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
        >>> logits, cache = model.run_with_cache(torch.tensor([[1, 2, 3]]), "blocks.1.moe.hook_router_logits",
        ...                                      incl_bwd=True, metric=lambda logits: logits[0, -1, 7])
        >>> cache["blocks.1.moe.hook_router_logits_grad"].shape  # [batch pos n_experts]
        torch.Size([1, 3, 4])
        """
        check_device(device)
        check_return_type(return_type, start_at_layer, stop_at_layer, loss_per_token)
        store: dict[str, Tensor] = {}

        def save(tensor: Tensor, hook: HookPoint) -> None:
            store[hook.name] = tensor.detach().to(device) if device is not None else tensor.detach()

        save.reads_only = True  # type: ignore[attr-defined]  # a recorder edits nothing (moelens._finite)

        points = self._registry.select(names_filter)
        start, stop = layer_range(self.cfg.n_layers, start_at_layer, stop_at_layer)
        model_inputs = self.to_inputs(inputs, attention_mask, start)  # tokenized once, also for the cache's mask
        call = CallContext()
        grad_points = [hp for hp in points if hp.name.rsplit(".", 1)[-1] not in NO_GRADIENT] if incl_bwd else []
        with self.hooks(fwd_hooks), ExitStack() as stack:
            for hp in points:
                stack.callback(hp.add(save))
            for hp in grad_points:
                stack.callback(hp.add(no_op_hook, "bwd"))  # enters the activation into the graph
            if incl_bwd:
                stack.enter_context(torch.enable_grad())
            logits = self._run(model_inputs, start or 0, stop, call)
        if incl_bwd:
            with torch.enable_grad():  # the metric joins the graph, also inside a caller's no_grad()
                store.update(metric_gradients(logits, metric, grad_points, call, device, self.check_finite))
            logits = logits.detach()
        cache = ActivationCache(store, self.cfg.moe_layers, self.cfg.n_experts, model_inputs.attention_mask.bool(), self)
        output = logits if stop is not None else shaped_output(logits, model_inputs, return_type, loss_per_token)
        return output, cache

    # -- helpers ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where inputs go: the device the input embedding runs on (accelerate's execution device
        when ``device_map=`` offloaded it; each layer's hooks follow their own tensors' device)."""
        return _execution_device(self.hf_model.get_input_embeddings())

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf_model.parameters()).dtype

    @property
    def name_or_path(self) -> str:
        """The hub id or folder the model was loaded from ("" for a model built in memory)."""
        return str(getattr(self.hf_model.config, "_name_or_path", ""))

    def __repr__(self) -> str:
        cfg = self.cfg
        return (
            f"HookedMoE({cfg.architecture}: {cfg.n_layers} layers, MoE layers {list(cfg.moe_layers)}, "
            f"{cfg.n_experts} experts, top-{cfg.top_k}, {cfg.scoring} routing)"
        )


def _execution_device(module: nn.Module) -> torch.device:
    hook = getattr(module, "_hf_hook", None)  # accelerate's AlignDevicesHook, set by device_map=
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(device if not isinstance(device, int) else f"cuda:{device}")
    weight = next(module.parameters())
    return weight.device if weight.device.type != "meta" else torch.device("cpu")


def _raise_stop(module: nn.Module, args: tuple) -> None:
    raise StopForward(args[0])
