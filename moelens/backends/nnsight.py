"""``NNsightMoE``: the routing hooks, cache and interventions of moelens, run through nnsight.

The model stays nnsight's (``TransformersModel`` or the deprecated ``LanguageModel``), locally or
on NDIF (``remote=True``), where the stock HF model runs and nothing of ours exists except what a
trace ships. Every call is one nnsight trace whose body passes HF's own router outputs (and, when
asked, block and layer inputs and outputs) through moelens hook points built from the same
:class:`~moelens.architectures.ArchitectureSpec` as :class:`~moelens.HookedMoE`: the same module
paths, router output format and routing rule, and the same editing code
(:mod:`moelens.backends._trace`). Hook names, cache names and shapes are ``HookedMoE``'s.

Offered hook points: every one ``HookedMoE`` offers on the same model (``hook_embed``, per layer
``hook_resid_pre|mid|post``, ``hook_attn_out``, ``hook_mlp_out``, per MoE layer the ``moe.*`` points,
``hook_expert_out`` included: the experts envoy is rerun ad hoc on one row per slot), and
``ln_final.hook_normalized``.

Batching: nnsight 0.8 applies an edit written in one ``tracer.invoke`` to the whole batch's router
tensor (the router sees flattened tokens, not invokes), so batched sweeps put every row in one
input and select rows themselves: pass ``experts=`` a LongTensor ``[batch]`` (one target per row),
as ``driver_effects`` does.

>>> import torch
>>> from moelens.backends.nnsight import NNsightMoE
>>> model = NNsightMoE.from_pretrained("moelens/mixtral-tiny")  # a local folder: no network
>>> logits, cache = model.run_with_cache(torch.tensor([[1, 2, 3]]))
>>> cache["blocks.0.moe.hook_topk_indices"].shape  # [batch pos k]
torch.Size([1, 3, 2])
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._finite import check_output, edit_points
from ..architectures import ArchitectureSpec, find_moe_layers, resolve, spec_for_model
from ..cache import ActivationCache
from ..errors import BackendError, InvalidInputError, ModelLoadError
from ..hook_points import HookPoint, HookRegistry, NameFilter, expand
from ..inputs import ModelInputs, prepare_inputs, warn_if_too_long
from ..model import HookedMoE, MoEConfig
from ._tl_calls import NNsightCalls
from ._trace import Recorder, TraceEnvoys, TraceView, build_steps, intercept, point_rows

__all__ = ["NNsightMoE", "register_for_remote"]


def _nnsight():
    try:
        import nnsight
    except ImportError as error:
        raise BackendError(
            "the nnsight backend needs the nnsight package: pip install 'moelens[nnsight]'."
        ) from error
    return nnsight


def register_for_remote() -> None:
    """Ship moelens by value with remote traces (``nnsight.register``): the server has no moelens,
    and the hook objects, routing rules and intervention objects a trace carries are ours."""
    import moelens

    _nnsight().register(moelens)


class NNsightMoE(NNsightCalls):
    """An nnsight-wrapped HF MoE causal LM with ``HookedMoE``'s hook names, cache and interventions.

    Build it with :meth:`from_pretrained` (a name, optionally ``remote=True`` for NDIF),
    :meth:`from_model` (an nnsight model you loaded) or :meth:`from_hf` (an HF model, wrapped by
    nnsight here).
    """

    resumes_from_residual = False  # every trace starts from token ids (moelens.backends.protocol)
    runs_backward = False  # forward traces only: no incl_bwd, gradient drivers or router LoRA
    # The family's routing rule on given logits, with the router parameters of this model (local
    # copies; a remote model's are meta tensors, so rules that read a tensor need a local model).
    route = HookedMoE.route
    _moe_layer = HookedMoE._moe_layer  # route() validates the layer with it
    # Read only hf_model, which both backends have (a remote model's meta copy carries the served
    # weights' dtype and the hub id). The token verbs, __call__ and generate: NNsightCalls.
    dtype, name_or_path = HookedMoE.dtype, HookedMoE.name_or_path

    def __init__(self, nn_model: Any, tokenizer: Any = None, remote: bool | str = False):
        self.nn_model = nn_model
        self.hf_model: nn.Module = nn_model._module  # meta tensors for a remote model
        self.spec: ArchitectureSpec = spec_for_model(self.hf_model)
        self.tokenizer = tokenizer if tokenizer is not None else getattr(nn_model, "tokenizer", None)
        if self.tokenizer is not None and self.tokenizer.pad_token is None and self.tokenizer.eos_token is not None:
            self.tokenizer.pad_token = self.tokenizer.eos_token  # padding is masked out; its id never matters
        self.remote = remote
        config = self.hf_model.config
        layers = resolve(self.hf_model, self.spec.layers)
        self.layers = layers  # the HF decoder layers (meta tensors for a remote model): routing rules read them
        self.cfg = MoEConfig.of(config, self.spec, len(layers), find_moe_layers(self.hf_model, self.spec))
        self._envoys = TraceEnvoys.collect(nn_model, self.hf_model, self.spec, self.cfg.moe_layers)
        self._routers = {index: envoy._module for index, envoy in self._envoys.routers.items()}  # HF modules, for route()
        self.hook_names = [name for _, name, _ in self._point_rows()]

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: Any, tokenizer: Any = None, remote: bool | str = False) -> NNsightMoE:
        """Wrap an nnsight model (``TransformersModel``, or the deprecated ``LanguageModel``).

        ``remote=True`` sends every trace to NDIF (the model must be served there);
        ``remote="local"`` is nnsight's dry run of the remote path (serialise, then run here).
        """
        return cls._wrap(model, tokenizer, remote, check_remote=True)

    @classmethod
    def _wrap(cls, model: Any, tokenizer: Any, remote: bool | str, check_remote: bool = False) -> NNsightMoE:
        nnsight = _nnsight()
        if not isinstance(model, nnsight.Envoy):
            raise InvalidInputError(
                f"from_model takes an nnsight model (nnsight.TransformersModel(...)); got {type(model).__name__}. "
                "For an HF model use NNsightMoE.from_hf(model)."
            )
        spec_for_model(model._module)  # refuse dense or unknown models before anything else
        if remote is True and check_remote:
            check_remote_ready(_repo_id(model))
        if model._module.training:
            warnings.warn("the model was in training mode; moelens calls eval() (routers add noise in train()).", stacklevel=2)
            model._module.eval()
        if remote:
            register_for_remote()
        return cls(model, tokenizer, remote)

    @classmethod
    def from_hf(cls, hf_model: nn.Module, tokenizer: Any = None) -> NNsightMoE:
        """Wrap a local HF model with nnsight (``TransformersModel``), in place: no weights copied.

        nnsight's pipeline needs a tokenizer; token-id inputs never use it.
        """
        nnsight = _nnsight()
        spec_for_model(hf_model)
        if tokenizer is None:
            raise InvalidInputError("nnsight cannot infer a tokenizer for an in-memory model: pass tokenizer=.")
        return cls.from_model(nnsight.TransformersModel(hf_model.eval(), tokenizer=tokenizer, task="text-generation"), tokenizer)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, remote: bool | str = False, tokenizer: Any = None, **kwargs: Any
    ) -> NNsightMoE:
        """Load a checkpoint through nnsight: a hub id, a local folder, or a zoo name ``moelens/<name>``.

        ``remote=False`` loads the weights here (``kwargs`` go to nnsight and on to
        ``from_pretrained``, e.g. ``dtype=``, ``device_map=``); ``remote=True`` first checks that
        NDIF serves the model, then builds only its skeleton (no weights) and sends every trace
        there, with the API key of nnsight's configuration (``NDIF_API_KEY`` or ``nnsight.login``).
        ``tokenizer`` overrides the one loaded from ``name_or_path`` (needed where nnsight cannot
        infer it, e.g. a folder without tokenizer files).
        """
        nnsight = _nnsight()
        from ..loading import resolve_zoo

        path = resolve_zoo(name_or_path)
        if remote is True:
            check_remote_ready(path)
        if tokenizer is None:
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(path)
            except (OSError, ValueError) as error:
                raise ModelLoadError(
                    f"no tokenizer could be loaded for {name_or_path!r} ({type(error).__name__}); nnsight needs one: "
                    "pass tokenizer=AutoTokenizer.from_pretrained(...)."
                ) from error
        try:
            model = nnsight.TransformersModel(
                path, tokenizer=tokenizer, task="text-generation", dispatch=not remote, **kwargs
            )
        except OSError as error:
            raise ModelLoadError(
                f"could not load {name_or_path!r} through nnsight ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:200]}). Check the name, or download it first while online."
            ) from error
        model._module.eval()  # nnsight builds the skeleton in training mode; routers must run in eval()
        return cls._wrap(model, tokenizer, remote)

    # -- hook points --------------------------------------------------------------------------
    check_finite = True  # NaN/inf from hooks or interventions raise NonFiniteError (moelens._finite), as in HookedMoE

    def _point_rows(self) -> list[tuple]:
        return point_rows(self.spec, self.cfg.n_layers, self.cfg.moe_layers, self._envoys.shared)

    def _registry(self) -> HookRegistry:
        """Fresh hook points for one call: what a trace ships is only that call's functions."""
        return HookRegistry(HookPoint(name, index, row) for index, name, row in self._point_rows())

    def hook_point(self, name: str) -> HookPoint:
        """The :class:`HookPoint` of a name (raises :class:`UnknownHookError` with suggestions)."""
        return self._registry()[name]

    # -- running ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where inputs go: the embedding's device (CPU for a remote model)."""
        if self.remote:
            return torch.device("cpu")
        return self.hf_model.get_input_embeddings().weight.device

    def to_inputs(self, inputs: Any, attention_mask: Tensor | None = None, max_length: int | None = None) -> ModelInputs:
        """Validated model inputs (tokens, mask, positions) for texts or token ids, as
        :meth:`HookedMoE.to_inputs` (texts truncated to ``max_length`` tokens when given; too long warns)."""
        model_inputs = prepare_inputs(inputs, attention_mask, self.tokenizer, self.cfg.d_vocab, self.device, max_length)
        warn_if_too_long(model_inputs.attention_mask.shape[-1], getattr(self.hf_model.config, "max_position_embeddings", None))
        return model_inputs

    def run_with_hooks(
        self,
        inputs: Any,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], Callable]] = (),
        *,
        attention_mask: Tensor | None = None,
        stop_at_layer: int | None = None,
        return_type: str | None = "logits",
        loss_per_token: bool = False,
    ) -> Any:
        """Run one trace with ``fwd_hooks`` (pairs of name or predicate, and fn) on its hook points;
        ``return_type`` as in ``HookedMoE.forward``.

        For remote runs the functions travel with the trace: define them in a module registered
        with ``nnsight.register`` (moelens' own are), not in a notebook cell that closes over
        local objects.
        """
        model_inputs = self._checked_inputs(inputs, attention_mask, return_type, stop_at_layer, loss_per_token)
        out, _ = self._run(model_inputs, fwd_hooks, None, (), None, stop_at_layer)
        return self._shaped(out, model_inputs, stop_at_layer, return_type, loss_per_token)

    def run_with_cache(
        self,
        inputs: Any,
        names_filter: NameFilter = None,
        *,
        device: str | torch.device | None = None,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], Callable]] = (),
        attention_mask: Tensor | None = None,
        stop_at_layer: int | None = None,
        return_type: str | None = "logits",
        loss_per_token: bool = False,
    ) -> tuple[Any, ActivationCache]:
        """Logits and an :class:`ActivationCache` with ``HookedMoE.run_with_cache``'s names and shapes.

        ``names_filter``: a name, a list, a predicate, or None (every offered hook point). ``device``
        moves each cached tensor as it is recorded (for a remote run it is the server that moves it).
        """
        names = [hp.name for hp in self._registry().select(names_filter)]
        model_inputs = self._checked_inputs(inputs, attention_mask, return_type, stop_at_layer, loss_per_token)
        out, cache = self._run(model_inputs, fwd_hooks, None, names, device, stop_at_layer)
        return self._shaped(out, model_inputs, stop_at_layer, return_type, loss_per_token), cache

    def run_with_interventions(
        self, inputs: Any, interventions: Any, *, attention_mask: Tensor | None = None, stop_at_layer: int | None = None, **output: Any
    ) -> Any:
        """Logits with interventions (Perturb, Scale, Ablate, Force, Patch; one or a list, applied
        in order) edited into the trace, exactly as ``HookedMoE`` applies them (``return_type=`` too)."""
        items = list(interventions) if isinstance(interventions, (list, tuple)) else [interventions]
        return self.run_with_hooks(inputs, items, attention_mask=attention_mask, stop_at_layer=stop_at_layer, **output)

    def logits_at(
        self, inputs: Any, positions: Tensor, interventions: Any = None, *, attention_mask: Tensor | None = None
    ) -> Tensor:
        """Logits at ``positions`` only: ``[batch k d_vocab]`` for a LongTensor ``positions``
        ``[batch k]`` (row ``i`` keeps ``logits[i, positions[i]]``), with ``interventions`` (as
        :meth:`run_with_interventions`). The selection happens inside the trace, so a remote run
        sends back ``k`` positions per row instead of the whole sequence; task scoring uses it.

        >>> model = NNsightMoE.from_pretrained("moelens/mixtral-tiny")
        >>> ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
        >>> last = model.logits_at(ids, torch.tensor([[2], [1]]))
        >>> torch.equal(last[1, 0], model(ids)[1, 1])
        True
        """
        model_inputs = self.to_inputs(inputs, attention_mask)
        batch, width = model_inputs.input_ids.shape
        if (not isinstance(positions, Tensor) or positions.dtype != torch.long or positions.ndim != 2
                or positions.shape[0] != batch or bool((positions < 0).any()) or bool((positions >= width).any())):
            shown = tuple(positions.shape) if isinstance(positions, Tensor) else type(positions).__name__
            raise InvalidInputError(f"positions must be a LongTensor [batch={batch} k] of positions in [0, {width}); got {shown}.")
        items = [] if interventions is None else list(interventions) if isinstance(interventions, (list, tuple)) else [interventions]
        out, _ = self._run(model_inputs, items, None, (), None, None, positions)
        return out

    def _run(
        self,
        inputs: Any,
        fwd_hooks: Sequence,
        attention_mask: Tensor | None,
        cache_names: Sequence[str],
        device: str | torch.device | None,
        stop_at_layer: int | None,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, ActivationCache]:
        model_inputs = inputs if isinstance(inputs, ModelInputs) else self.to_inputs(inputs, attention_mask)
        stop = self._stop(stop_at_layer)
        registry = self._registry()
        view = TraceView(self.cfg, frozenset(registry.points))
        recorder = Recorder(device)
        pairs = expand(list(fwd_hooks), view) + [(name, recorder) for name in cache_names]
        with registry.attached(pairs):
            if stop is not None:
                after = [hp.name for hp in registry.points.values() if hp.active and _runs_at(hp, self.cfg.n_layers) >= stop]
                if after:
                    raise InvalidInputError(f"stop_at_layer={stop} stops before hooked points {after[:3]}.")
            edited = edit_points(registry) if self.check_finite else []
            registry._state.check_finite = self.check_finite and not self.remote  # a remote trace checks its output only
            steps = build_steps(self._envoys, registry, self.spec, self.cfg.n_experts)
            stop_envoy = None if stop is None else (self._envoys.layers[stop] if stop < self.cfg.n_layers else self._envoys.final_norm)
            mask = model_inputs.attention_mask.cpu()
            out, store = _traced(self.nn_model, model_inputs.hf_kwargs(), (*steps, self._envoys), registry, mask, recorder,
                                 stop_envoy, self.remote, positions)
        check_output(out, edited, "logits" if stop is None else "residual stream")  # moelens._finite
        cache = ActivationCache(dict(store), self.cfg.moe_layers, self.cfg.n_experts, model_inputs.attention_mask.bool(), self)
        return out, cache

    def _stop(self, stop_at_layer: int | None) -> int | None:
        if stop_at_layer is None:
            return None
        n = self.cfg.n_layers
        if isinstance(stop_at_layer, bool) or not isinstance(stop_at_layer, int) or not -n <= stop_at_layer <= n:
            raise InvalidInputError(f"stop_at_layer={stop_at_layer!r} must be an int in [0, {n}].")
        return stop_at_layer % (n + 1) if stop_at_layer >= 0 else stop_at_layer + n

    def __repr__(self) -> str:
        cfg = self.cfg
        where = {False: "local", True: "remote", "local": "remote (local simulation)"}[self.remote]
        return (
            f"NNsightMoE({cfg.architecture}, {where}: {cfg.n_layers} layers, MoE layers {list(cfg.moe_layers)}, "
            f"{cfg.n_experts} experts, top-{cfg.top_k})"
        )


def _traced(nn_model, hf_kwargs: dict, steps, registry, mask, recorder, stop_envoy, remote, positions=None) -> tuple[Tensor, dict]:
    """One nnsight trace. Its body is what a remote run ships: ``steps`` (layer steps, the
    once-per-model points, the envoys), ``registry`` and ``recorder`` hold envoys, hook points and
    small tensors only. ``positions`` ``[batch k]``: keep only those
    logits (selected on the server)."""
    import nnsight

    ids = hf_kwargs.pop("input_ids")
    out = None
    with nn_model.trace(ids, **hf_kwargs, remote=remote) as tracer:
        intercept(*steps, registry, mask)
        store = nnsight.save(recorder.store)
        if stop_envoy is not None:
            out = nnsight.save(stop_envoy.input)
            tracer.stop()
        elif positions is not None:
            logits = nn_model.output.logits
            index = positions.to(logits.device)
            out = nnsight.save(logits[torch.arange(index.shape[0], device=logits.device).unsqueeze(1), index])
        else:
            out = nnsight.save(nn_model.output.logits)
    return out, store


def _runs_at(point: HookPoint, n_layers: int) -> int:
    """The layer a hook point runs in, for stop_at_layer: the embedding before layer 0, the final norm after the last."""
    if point.layer is not None:
        return point.layer
    return -1 if point.name == "hook_embed" else n_layers


def check_remote_ready(model_or_name: str) -> None:
    """Before any work is sent: an API key is configured (never read or shown here beyond its
    presence) and NDIF serves the model; else :class:`BackendError` saying what to do."""
    nnsight = _nnsight()
    from nnsight.schema.config import CONFIG

    name = model_or_name
    if not CONFIG.API.APIKEY:
        raise BackendError(
            "remote=True needs an NDIF API key in nnsight's configuration: set the NDIF_API_KEY environment "
            "variable or call nnsight.login() once (https://login.ndif.us). Or run locally with remote=False."
        )
    try:
        served = nnsight.is_model_running(name)
    except Exception as error:  # the hub or NDIF unreachable: same advice
        raise BackendError(
            f"could not ask NDIF whether {name!r} is served ({type(error).__name__}). Check the network, or "
            "use remote=False to run it here."
        ) from None  # the original error may quote request headers
    if not served:
        raise BackendError(
            f"{name!r} is not served on NDIF right now, so a remote trace would fail. Use remote=False to load "
            "it here, or pick a served model (nnsight.status() lists them)."
        )


def _repo_id(model: Any) -> str:
    config = getattr(model._module, "config", None)
    return str(getattr(config, "_name_or_path", "") or model._module.__class__.__name__)
