"""Router LoRA: fine-tune only the routers of an MoE model on a task (peft), as the paper does.

:func:`tune_router` copies the HF model, adds a LoRA adapter (peft ``target_parameters``) to the
weight of the router of every MoE layer and trains only the adapter, on the NLL of the task's
gold completion (label word, choice letter or answer) after its prompt, through the hooked
forward. Everything else, including the routers' own weights, stays bit-identical. Shared-expert
gates (Qwen2-MoE's ``shared_expert_gate``, a sigmoid scale of the shared expert's output) are not
routers and are left out unless ``include_shared_gate=True``. The result is a :class:`TunedMoE`
(a :class:`~moelens.HookedMoE`) with ``save_adapter``/``load_adapter``.

"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..errors import InvalidInputError
from ..model import HookedMoE
from .evaluate import split_or_records
from .prompts import format_prompt
from .registry import Task, get_task
from .scoring import encode_prompts, pad_rows

__all__ = ["TunedMoE", "router_parameter_names", "tune_router"]


def router_parameter_names(model: HookedMoE, include_shared_gate: bool = False) -> list[str]:
    """Full names (in ``model.hf_model``) of the router weights of the MoE layers (and of the
    shared-expert gates with ``include_shared_gate``)."""
    from ..architectures.registry import resolve

    layers = resolve(model.hf_model, model.spec.layers)
    names_by_module = {id(module): name for name, module in model.hf_model.named_modules()}
    names = []
    for index in model.cfg.moe_layers:
        block = resolve(layers[index], model.spec.moe_block)
        modules = [resolve(block, model.spec.router)]
        if include_shared_gate:
            modules += [m for n, m in block.named_children() if n.endswith("shared_expert_gate")]
        names += [f"{names_by_module[id(m)]}.weight" for m in modules if m is not None]
    return names


def _forward_attributes(wrapper: torch.nn.Module) -> None:
    """Let a peft wrapper answer for its router's attributes (``top_k``, biases...), which the
    family's routing rule reads from the router module."""
    base = type(wrapper)

    def __getattr__(self, name):
        try:
            return base.__getattr__(self, name)
        except AttributeError:
            return getattr(base.__getattr__(self, "base_layer"), name)

    wrapper.__class__ = type(f"Router{base.__name__}", (base,), {"__getattr__": __getattr__})


def _with_adapter(model: HookedMoE, config: dict) -> TunedMoE:
    from peft import LoraConfig, inject_adapter_in_model

    hf = copy.deepcopy(model.hf_model)
    lora = LoraConfig(r=config["rank"], lora_alpha=config["alpha"], lora_dropout=0.0, target_modules=[],
                      target_parameters=config["parameters"])
    hf = inject_adapter_in_model(lora, hf)
    for module in hf.modules():
        if type(module).__name__ == "ParamWrapper":
            _forward_attributes(module)
    for name, param in hf.named_parameters():
        param.requires_grad_("lora_" in name)
    tuned = TunedMoE(hf, model.tokenizer, model.spec)
    tuned.adapter_config = dict(config)
    return tuned


class TunedMoE(HookedMoE):
    """A :class:`~moelens.HookedMoE` whose routers carry a LoRA adapter (see :func:`tune_router`).

    ``adapter_config``: rank, alpha, the router parameters, the task and training settings;
    ``losses``: the training loss at each step.

    Example::

        tuned = moelens.tune_router(model, "sst2", steps=200)
        tuned.save_adapter("sst2-router")
        again = TunedMoE.load_adapter(model, "sst2-router")
    """

    adapter_config: dict
    losses: list[float]

    def adapter_parameters(self) -> dict[str, torch.Tensor]:
        """The adapter's tensors by name (``...gate.lora_A.default.weight`` ...)."""
        return {n: p for n, p in self.hf_model.named_parameters() if "lora_" in n}

    def save_adapter(self, path: str | Path) -> Path:
        """Write ``path/adapter.safetensors`` and ``path/adapter.json``; returns the folder."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({n: p.detach().cpu().contiguous() for n, p in self.adapter_parameters().items()}, folder / "adapter.safetensors")
        (folder / "adapter.json").write_text(json.dumps(self.adapter_config, indent=2), encoding="utf-8")
        return folder

    @classmethod
    def load_adapter(cls, model: HookedMoE, path: str | Path) -> TunedMoE:
        """``model`` (untouched) with the adapter saved at ``path``, as a new :class:`TunedMoE`."""
        folder = Path(path)
        if not (folder / "adapter.json").is_file():
            raise InvalidInputError(f"{folder} holds no adapter.json; pass the folder written by save_adapter().")
        tuned = _with_adapter(model, json.loads((folder / "adapter.json").read_text(encoding="utf-8")))
        weights = load_file(folder / "adapter.safetensors")
        own = tuned.adapter_parameters()
        if set(weights) != set(own):
            raise InvalidInputError(f"the adapter at {folder} does not fit this model: its tensors {sorted(set(weights) - set(own))[:3]} "
                                    f"have no place here (expected {sorted(own)[:3]}...).")
        with torch.no_grad():
            for name, value in weights.items():
                own[name].copy_(value)
        tuned.losses = []
        return tuned


def _examples(model: HookedMoE, spec: Task, records: list[dict], max_length: int) -> list[tuple[list[int], list[int]]]:
    prompts = encode_prompts(model.tokenizer, [format_prompt(r) for r in records], max_length)
    targets = [list(model.tokenizer(spec.label_target(r), add_special_tokens=False)["input_ids"]) for r in records]
    return list(zip(prompts, targets, strict=True))


def _loss(model: HookedMoE, batch: list[tuple[list[int], list[int]]]) -> torch.Tensor:
    """Mean NLL per target token of the gold completions after their prompts."""
    seqs = [p + t for p, t in batch]
    ids, mask = pad_rows(seqs, model.tokenizer.pad_token_id or 0, model.device)
    logp = torch.log_softmax(model(ids, attention_mask=mask).float(), dim=-1)  # [batch pos d_vocab]
    total, count = logp.new_zeros(()), 0
    for row, (prompt, target) in enumerate(batch):
        positions = torch.arange(len(prompt) - 1, len(prompt) + len(target) - 1, device=logp.device)  # predicting target
        total = total - logp[row, positions, torch.tensor(target, device=logp.device)].sum()
        count += len(target)
    return total / max(1, count)


def tune_router(
    model: HookedMoE,
    task: str | Task,
    data: Any = None,
    steps: int = 100,
    rank: int = 4,
    *,
    alpha: float | None = None,
    lr: float = 1e-3,
    batch_size: int = 16,
    include_shared_gate: bool = False,
    limit: int | None = None,
    max_length: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> TunedMoE:
    """Train a LoRA adapter of rank ``rank`` on the routers only (module docstring) for ``steps``
    steps of ``batch_size`` examples of ``data`` (what :func:`~moelens.evaluate` takes, or a split
    name; default: the task's selection split, e.g. SST-2 train). ``model`` is not modified.

    >>> from moelens import HookedMoE
    >>> model = HookedMoE.from_pretrained("moelens/mixtral-tiny")
    >>> from moelens.tasks.demo import demo_sentiment_records  # labelled reviews shipped with moelens
    >>> tuned = tune_router(model, "sst2", data=demo_sentiment_records(8), steps=1, batch_size=4, progress=False)
    >>> len(tuned.adapter_parameters())  # lora_A and lora_B of 4 routers
    8
    """
    if model.tokenizer is None:
        raise InvalidInputError("tune_router needs a model with a tokenizer (it trains on texts).")
    if steps < 1 or rank < 1 or batch_size < 1:
        raise InvalidInputError(f"steps={steps}, rank={rank} and batch_size={batch_size} must all be >= 1.")
    spec = get_task(task)
    records, label = split_or_records(spec, data, spec.select_split, limit, None)
    config = {"rank": rank, "alpha": alpha if alpha is not None else rank, "parameters": router_parameter_names(model, include_shared_gate),
              "task": spec.name, "data": label, "steps": steps, "lr": lr, "batch_size": batch_size, "seed": seed}
    tuned = _with_adapter(model, config)
    examples = _examples(tuned, spec, records, max_length)
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(list(tuned.adapter_parameters().values()), lr=lr, weight_decay=0.0)
    tuned.losses = []
    for _ in tqdm(range(steps), desc="router LoRA", unit="step", disable=not progress):
        loss = _loss(tuned, rng.sample(examples, min(batch_size, len(examples))))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        tuned.losses.append(float(loss.detach()))
    for param in tuned.adapter_parameters().values():
        param.requires_grad_(False)
    return tuned
