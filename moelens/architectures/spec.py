"""An MoE family described as data: where its modules are, its routing rule, how to read its router.

Paths are dotted attribute paths. ``layers`` and ``final_norm`` start at the causal-LM root;
``moe_block``, ``attention``, ``attn_norm`` and ``mlp_norm`` start at a decoder layer (``moe_block`` is
also where dense layers of mixed models keep their MLP); ``router``, ``experts`` and ``shared_experts`` start at the
MoE block. A path may list candidates separated by ``|`` where HF renamed a module between releases.
Routing semantics have no defaults: every spec states its rule and its router's output format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from torch import Tensor, nn

from .routing import Routing

__all__ = ["ADDITIVE", "ArchitectureSpec", "ExpertLayout", "FUSED_GATE_UP", "ResidualForm", "RouterIO", "RoutingRule", "RouterOutput"]


class RouterOutput(NamedTuple):
    """A router's return value read into one form; tensors are flattened over tokens."""

    logits: Tensor  # [tokens n_experts]
    weights: Tensor  # [tokens k]
    index: Tensor  # [tokens k]


@dataclass(frozen=True)
class RouterIO:
    """How to read a router's return value and how to write an edited routing back into it.

    ``unpack(output, router_input, router)`` returns a :class:`RouterOutput`; ``pack(output, new)``
    returns a value of the router's own output format carrying ``new``.
    """

    name: str
    unpack: Callable[[Any, Tensor, nn.Module], RouterOutput]
    pack: Callable[[Any, RouterOutput], Any]


@dataclass(frozen=True)
class RoutingRule:
    """The routing rule of a family: scoring name (for docs and metrics) and the routing function."""

    scoring: Literal["softmax", "sigmoid", "sparsemixer"]  # what turns logits into the router's scores
    route: Callable[[Tensor, nn.Module], Routing]
    summary: str  # one line, rendered on the architecture's docs page


@dataclass(frozen=True)
class ResidualForm:
    """How a decoder layer writes its two branches into the residual stream (read from the family's
    ``DecoderLayer.forward``; docs/concepts/hook-points.md lists every family).

    ``additive``: ``resid_mid = resid_pre + s * attn_out`` and ``resid_post = resid_mid + s * mlp_out``,
    with ``s = branch_scale(config)`` (HF's own op, so the identities hold bit for bit; ``None`` means
    the plain add, no multiplication), and ``resid_pre[0] = hook_embed * embed_scale(config)``. A
    family whose skip connection carries something else (MiniMax: the *normalised* stream times an
    alpha) has ``additive=False``: the stream is then not a sum of branch outputs.
    """

    additive: bool
    branch_scale: Callable[[Any], float] | None = None
    embed_scale: Callable[[Any], float] | None = None
    note: str = ""


ADDITIVE = ResidualForm(True, note="resid_mid = resid_pre + attn_out; resid_post = resid_mid + mlp_out")


@dataclass(frozen=True)
class ExpertLayout:
    """Where the routed experts' weights live in the experts module (read by ``HookedMoE.expert_weights``).

    Fused layouts hold one 3-D parameter per projection: ``gate_up`` is ``[E, 2F, H]`` (applied as
    ``W @ x``) or, when ``transposed``, ``[E, H, 2F]`` (applied as ``x @ W``); the gate is the first
    half of the 2F axis, or the even columns when ``interleaved``. ``down`` is ``[E, H, F]`` (or
    ``[E, F, H]`` when transposed). ``gate_up is None`` means one module per expert (a ModuleList)
    with ``nn.Linear`` projections named ``module_gate``/``module_up``/``module_down``.
    """

    gate_up: str | None = "gate_up_proj"
    down: str | None = "down_proj"
    transposed: bool = False
    interleaved: bool = False
    gate_up_bias: str | None = None  # [E, 2F], split like gate_up
    down_bias: str | None = None  # [E, H]
    module_gate: str = "gate_proj"
    module_up: str = "up_proj"
    module_down: str = "down_proj"
    act_fn: str | None = None  # the experts' activation where it is not config.hidden_act


# transformers v5's standard fused experts: gate_up_proj [E, 2F, H] (gate rows first), down_proj [E, H, F]
FUSED_GATE_UP = ExpertLayout()


@dataclass(frozen=True)
class ArchitectureSpec:
    """Everything moelens needs to know about one MoE family of ``transformers``."""

    model_types: tuple[str, ...]
    routing: RoutingRule
    router_io: RouterIO
    n_experts_attr: str  # config attribute with the number of routed experts
    top_k_attr: str  # config attribute with k
    moe_returns_tuple: bool  # the MoE block returns (hidden, extra) instead of hidden
    # "fused": 3-D weights called (hidden, index, weights); "dense": every expert runs on every token
    # (the weight scales the expert's input); "module_list": one module per expert. Only "fused" gives
    # per-slot outputs (hook_expert_out).
    experts_layout: Literal["fused", "dense", "module_list"]
    router: str
    experts: str
    shared_experts: str | None
    shared_expert_count: Callable[[Any], int] = field(default=lambda config: 0)
    # the block calls its shared experts before the router (Qwen2-MoE): the nnsight backend reads
    # modules in call order
    shared_first: bool = False
    # What the causal LM does to the LM head's output before returning it (logit scaling, casts);
    # ``(logits, config) -> logits``. HookedMoE.unembed applies it so it matches the forward bit for bit.
    logits_from_head: Callable[[Tensor, Any], Tensor] = field(default=lambda logits, config: logits)
    expert_weights: ExpertLayout = FUSED_GATE_UP
    d_mlp_attr: str = "intermediate_size"  # config attribute with the routed experts' FFN width
    router_weight: str = "weight"  # the router's [n_experts d_model] parameter
    layers: str = "model.layers"
    final_norm: str = "model.norm"
    moe_block: str = "mlp"
    attention: str = "self_attn"  # its output is hook_attn_out
    attn_norm: str = "input_layernorm"
    mlp_norm: str = "post_attention_layernorm"  # its input is hook_resid_mid
    norm: Literal["rms", "layer"] = "rms"  # the formula of every norm (RMSNorm or LayerNorm), for apply_ln
    norm_eps_attr: str = "rms_norm_eps"  # config attribute with every norm's epsilon
    residual: ResidualForm = ADDITIVE
    checkpoints: tuple[str, ...] = ()
    notes: str = ""

    @property
    def name(self) -> str:
        return self.model_types[0]
