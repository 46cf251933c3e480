"""HookedMoE: a HuggingFace MoE causal LM, wrapped in place, with named routing hook points."""

from __future__ import annotations

import warnings
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .architectures import ArchitectureSpec, find_moe_layers, resolve, spec_for_model
from .cache import ActivationCache
from .errors import InvalidInputError, ModelLoadError
from .hook_points import HookFn, HookPoint, HookRegistry, NameFilter
from .inputs import ModelInputs, prepare_inputs, prepare_residual
from .names import HOOK_TABLE, moe_name, resid_name
from ._interception import LayerHooks, MoEHooks, StopForward

__all__ = ["HookedMoE", "MoEConfig"]

FwdHooks = Sequence[tuple[str | Callable[[str], bool], HookFn]]


@dataclass(frozen=True)
class MoEConfig:
    """What moelens knows about the wrapped model's architecture (``model.cfg``).

    >>> from moelens.testing import tiny_model
    >>> cfg = HookedMoE.from_hf(tiny_model("deepseek_v3")).cfg
    >>> cfg.moe_layers, cfg.n_experts, cfg.top_k, cfg.n_shared_experts, cfg.scoring
    ((1, 2), 8, 2, 1, 'sigmoid')
    """

    architecture: str  # HF model_type
    n_layers: int
    moe_layers: tuple[int, ...]
    n_experts: int
    top_k: int
    d_model: int
    d_vocab: int
    n_shared_experts: int
    scoring: str  # "softmax" | "sigmoid" | "sparsemixer"


class HookedMoE(nn.Module):
    """An HF Mixture-of-Experts causal LM with TransformerLens-style hook points on its routing.

    >>> from moelens.testing import tiny_model
    >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
    >>> model.cfg.n_experts, model.cfg.top_k
    (4, 2)
    >>> logits, cache = model.run_with_cache(torch.tensor([[1, 2, 3]]))
    >>> cache.topk_mask().shape  # [moe_layer batch pos n_experts]
    torch.Size([2, 1, 3, 4])
    """

    resumes_from_residual = True  # run_with_interventions takes start_at_layer= (moelens.backends.protocol)

    def __init__(self, hf_model: nn.Module, tokenizer: Any = None, spec: ArchitectureSpec | None = None):
        super().__init__()
        self.hf_model = hf_model  # registered as a submodule: .to()/.eval() reach it; weights are not copied
        self.tokenizer = tokenizer
        self.spec = spec or spec_for_model(hf_model)
        if getattr(hf_model, "use_kernels", False):
            warnings.warn(
                "this model runs with use_kernels=True: hub kernels replace whole MoE forwards and moelens "
                "hooks inside them never fire. Load it with use_kernels=False.",
                stacklevel=2,
            )
        self.layers: nn.ModuleList = resolve(hf_model, self.spec.layers)
        self.final_norm: nn.Module = resolve(hf_model, self.spec.final_norm)
        moe_layers = find_moe_layers(hf_model, self.spec)
        config = hf_model.config
        self.cfg = MoEConfig(
            architecture=config.model_type,
            n_layers=len(self.layers),
            moe_layers=moe_layers,
            n_experts=getattr(config, self.spec.n_experts_attr),
            top_k=getattr(config, self.spec.top_k_attr),
            d_model=config.hidden_size,
            d_vocab=config.vocab_size,
            n_shared_experts=self.spec.shared_expert_count(config),
            scoring=self.spec.routing.scoring,
        )
        self.current_attention_mask: Tensor | None = None  # [batch pos] of the call in progress
        self._layer_hooks: list[LayerHooks] = []
        self._moe_hooks: list[MoEHooks] = []
        self._registry = HookRegistry(self._build_hook_points())

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, model: nn.Module, tokenizer: Any = None) -> HookedMoE:
        """Wrap an HF MoE causal LM in place (no copy of the weights).

        A model in training mode is switched to eval(): routers add jitter or sample in train().
        """
        spec = spec_for_model(model)  # refuse dense or unknown models before touching anything
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
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = _resolve_zoo(name_or_path)
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
            warnings.warn(f"no tokenizer could be loaded for {name_or_path!r} ({error}); pass token ids.", stacklevel=2)
            tokenizer = None
        if device is not None:
            model = model.to(device)
        model.eval()
        return cls.from_hf(model, tokenizer)

    def _build_hook_points(self) -> Iterator[HookPoint]:
        for index, layer in enumerate(self.layers):
            pre = HookPoint(resid_name(index, "pre"), index, HOOK_TABLE["hook_resid_pre"])
            post = HookPoint(resid_name(index, "post"), index, HOOK_TABLE["hook_resid_post"])
            self._layer_hooks.append(LayerHooks(layer, pre, post))
            yield pre
            if index in self.cfg.moe_layers:
                yield from self._build_moe_points(index, layer)
            yield post

    def _build_moe_points(self, index: int, layer: nn.Module) -> Iterator[HookPoint]:
        block = resolve(layer, self.spec.moe_block)
        shared = resolve(block, self.spec.shared_experts) if self.spec.shared_experts else None
        points = {}
        for suffix, row in HOOK_TABLE.items():
            if row.scope == "layer" or (row.scope == "shared" and shared is None):
                continue
            if suffix == "hook_expert_out" and self.spec.experts_layout != "fused":
                continue  # per-slot outputs need HF's fused (hidden, index, weights) experts call
            points[suffix] = HookPoint(moe_name(index, suffix), index, row)
        self._moe_hooks.append(
            MoEHooks(
                self.spec,
                block,
                resolve(block, self.spec.router),
                resolve(block, self.spec.experts),
                shared,
                points,
                self.cfg.n_experts,
            )
        )
        yield from points.values()

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
        detach = [hp.add(fn) for hp in self._registry.select(name)]
        return lambda: [undo() for undo in detach] and None

    def reset_hooks(self) -> None:
        """Detach every hook function from every hook point."""
        self._registry.remove_all()

    @contextmanager
    def hooks(self, fwd_hooks: FwdHooks = ()) -> Iterator[HookedMoE]:
        """Context manager: hooks attached inside, removed on exit, also on exceptions.

        >>> from moelens.testing import tiny_model
        >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
        >>> with model.hooks([("blocks.0.moe.hook_out", lambda x, hook: x * 0)]):
        ...     _ = model(torch.tensor([[1, 2]]))
        >>> model.hook_point("blocks.0.moe.hook_out").active
        False
        """
        from .interventions import expand

        with self._registry.attached(expand(list(fwd_hooks), self)):
            yield self

    # -- running ------------------------------------------------------------------------------
    def forward(
        self,
        inputs: str | list[str] | Tensor,
        *,
        attention_mask: Tensor | None = None,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
    ) -> Tensor:
        """Logits ``[batch pos d_vocab]``, or the residual stream entering ``stop_at_layer``.

        With ``start_at_layer=L`` the input is the residual stream ``[batch pos d_model]`` entering
        layer L (pass ``attention_mask=`` if it was padded).
        """
        start, stop = self._layer_range(start_at_layer, stop_at_layer)
        model_inputs = self.to_inputs(inputs, attention_mask=attention_mask, start_at_layer=start)
        return self._run(model_inputs, start or 0, stop)

    def _layer_range(self, start_at_layer: int | None, stop_at_layer: int | None) -> tuple[int | None, int | None]:
        n_layers = self.cfg.n_layers
        start = self._check_layer(start_at_layer, "start_at_layer", 0, n_layers - 1)
        stop = self._check_layer(stop_at_layer, "stop_at_layer", 0, n_layers)
        if start is not None and stop is not None and stop <= start:
            raise InvalidInputError(f"stop_at_layer={stop} must be greater than start_at_layer={start}.")
        return start, stop

    def to_inputs(
        self, inputs: Any, attention_mask: Tensor | None = None, start_at_layer: int | None = None
    ) -> ModelInputs:
        """Validated model inputs (tokens, mask, positions) for texts, token ids or a residual stream."""
        device = self.device
        if start_at_layer is not None:
            return prepare_residual(inputs, attention_mask, self.cfg.d_model, device)
        return prepare_inputs(inputs, attention_mask, self.tokenizer, self.cfg.d_vocab, device)

    def _run(self, model_inputs: ModelInputs, start: int, stop: int | None) -> Tensor:
        with ExitStack() as stack:
            for index, layer_hooks in enumerate(self._layer_hooks):
                if stop is not None and index > stop:
                    break
                layer_hooks.install(stack, skip=index < start, stop=index == stop)
            if stop == self.cfg.n_layers:
                stack.callback(self.final_norm.register_forward_pre_hook(_raise_stop).remove)
            for moe_hooks in self._moe_hooks:
                moe_hooks.install(stack)
            self.current_attention_mask = model_inputs.attention_mask
            stack.callback(setattr, self, "current_attention_mask", None)
            try:
                return self.hf_model(**model_inputs.hf_kwargs()).logits
            except StopForward as stopped:
                return stopped.resid

    def run_with_hooks(
        self,
        inputs: str | list[str] | Tensor,
        fwd_hooks: FwdHooks = (),
        *,
        attention_mask: Tensor | None = None,
        **forward_kwargs,
    ) -> Tensor:
        """Run with ``fwd_hooks`` (pairs of name or predicate, and fn) attached for this call only."""
        with self.hooks(fwd_hooks):
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
    ) -> tuple[Tensor, ActivationCache]:
        """Run and record activations: ``names_filter`` is a name, a list, a predicate, or None (all).

        ``device`` moves each tensor as it is recorded (e.g. ``"cpu"`` to keep GPU memory flat).
        Opt-in hooks (``hook_expert_out``) are computed only when they are cached or hooked, so a
        filter without them is cheaper.
        """
        store: dict[str, Tensor] = {}

        def save(tensor: Tensor, hook: HookPoint) -> None:
            store[hook.name] = tensor.detach().to(device) if device is not None else tensor.detach()

        points = self._registry.select(names_filter)
        start, stop = self._layer_range(start_at_layer, stop_at_layer)
        model_inputs = self.to_inputs(inputs, attention_mask, start)  # tokenized once, also for the cache's mask
        with self.hooks(fwd_hooks), ExitStack() as stack:
            for hp in points:
                stack.callback(hp.add(save))
            logits = self._run(model_inputs, start or 0, stop)
        cache = ActivationCache(store, self.cfg.moe_layers, self.cfg.n_experts, model_inputs.attention_mask.bool())
        return logits, cache

    def run_with_interventions(
        self,
        inputs: str | list[str] | Tensor,
        interventions: Any,
        *,
        attention_mask: Tensor | None = None,
        **forward_kwargs,
    ) -> Tensor:
        """Run with interventions (one, or a list applied in order) active for this call only.

        >>> from moelens.interventions import Ablate
        >>> from moelens.testing import tiny_model
        >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
        >>> model.run_with_interventions(torch.tensor([[1, 2]]), [Ablate(0, 3)]).shape
        torch.Size([1, 2, 97])
        """
        return self.run_with_hooks(inputs, _as_list(interventions), attention_mask=attention_mask, **forward_kwargs)

    @contextmanager
    def intervene(self, *interventions: Any) -> Iterator[HookedMoE]:
        """Context manager: interventions active for every call inside the block."""
        items = [item for group in interventions for item in _as_list(group)]
        with self.hooks(items):
            yield self

    def run_moe_block(
        self,
        layer: int,
        moe_input: Tensor,
        fwd_hooks: FwdHooks = (),
        *,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Run only the MoE block of ``layer`` on ``moe_input [batch pos d_model]`` (the value of
        ``blocks.{layer}.moe.hook_in``), with hooks or interventions; returns ``hook_out``'s value.

        This is what makes local analyses cheap: a perturbation's direct effect on the block output
        needs one block, not a forward.

        >>> from moelens.testing import tiny_model
        >>> model = HookedMoE.from_hf(tiny_model("mixtral"))
        >>> _, cache = model.run_with_cache(torch.tensor([[4, 5, 6]]))
        >>> out = model.run_moe_block(1, cache["blocks.1.moe.hook_in"])
        >>> torch.equal(out, cache["blocks.1.moe.hook_out"])
        True
        """
        if layer not in self.cfg.moe_layers:
            raise InvalidInputError(f"layer {layer} is not an MoE layer; MoE layers are {list(self.cfg.moe_layers)}.")
        if not isinstance(moe_input, Tensor) or moe_input.ndim != 3 or moe_input.shape[-1] != self.cfg.d_model:
            raise InvalidInputError(f"moe_input must be [batch pos d_model={self.cfg.d_model}]; got {getattr(moe_input, 'shape', moe_input)}.")
        moe_hooks = self._moe_hooks[self.cfg.moe_layers.index(layer)]
        mask = attention_mask if attention_mask is not None else torch.ones(moe_input.shape[:2], dtype=torch.long)
        with self.hooks(fwd_hooks), ExitStack() as stack:
            self.current_attention_mask = mask.to(moe_input.device)
            stack.callback(setattr, self, "current_attention_mask", None)
            moe_hooks.install(stack)
            output = moe_hooks.block(moe_input)
        hidden = output[0] if self.spec.moe_returns_tuple else output
        return hidden.view(moe_input.shape)  # some blocks return [tokens d_model]

    # -- helpers ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where inputs go: the device the input embedding runs on (accelerate's execution device
        when ``device_map=`` offloaded it; each layer's hooks follow their own tensors' device)."""
        return _execution_device(self.hf_model.get_input_embeddings())

    def to_tokens(self, texts: str | list[str]) -> tuple[Tensor, Tensor]:
        """Token ids and attention mask ``([batch pos], [batch pos])`` for texts, padded."""
        model_inputs = self.to_inputs(texts)
        return model_inputs.input_ids, model_inputs.attention_mask

    def _check_layer(self, value: int | None, name: str, low: int, high: int) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInputError(f"{name} must be an int in [{low}, {high}]; got {value!r}.")
        resolved = value + self.cfg.n_layers if value < 0 else value
        if not low <= resolved <= high:
            raise InvalidInputError(f"{name}={value} is out of range; this model takes [{low}, {high}].")
        return resolved

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


def _as_list(interventions: Any) -> list:
    return list(interventions) if isinstance(interventions, (list, tuple)) else [interventions]


def _raise_stop(module: nn.Module, args: tuple) -> None:
    raise StopForward(args[0])


def _resolve_zoo(name: str) -> str:
    """A zoo name ``moelens/<name>`` maps to its packaged folder; it never goes to the hub."""
    from .zoo import ZOO_PREFIX, resolve as resolve_zoo

    path = resolve_zoo(name)
    if path is not None:
        return str(path)
    if isinstance(name, str) and name.startswith(ZOO_PREFIX) and not Path(name).exists():
        raise ModelLoadError(
            f"{name!r} is not an installed moelens zoo model; installed: {_zoo_names()}. Reinstall moelens, or "
            f"train it with `python -m moelens.zoo.train` (see the zoo cards)."
        )
    return name


def _zoo_names() -> str:
    from .zoo import ZOO_PREFIX, resolve as resolve_zoo
    from .zoo import ZOO_MODELS

    installed = [ZOO_PREFIX + short for short in ZOO_MODELS if resolve_zoo(ZOO_PREFIX + short) is not None]
    return ", ".join(installed) or "none"
