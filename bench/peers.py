"""Routing capture and one route-ablation through moelens and its peers, side by side.

    python bench/peers.py            # random Mixtral: 8 layers, d_model 512, 8 experts, 1 x 512 tokens
    python bench/peers.py --smoke    # tiny sizes, for CI (no per-variant memory processes)

Variants, run interleaved with one thread (``torch.set_num_threads(1)``): the bare HF forward;
hand-written PyTorch forward hooks on the routers; ``HookedMoE.run_with_cache`` (routing hooks);
a hand-written nnsight trace; ``NNsightMoE.run_with_cache``; TransformerLens 4.x
``TransformerBridge.run_with_cache`` of its router hooks (when ``transformer_lens`` imports:
``pip install "moelens[bench]"``). Every variant then route-ablates one expert (never selected,
the next-best expert takes the slot) and its logits are asserted identical to moelens'
``Ablate``. Reported: median wall time and CPU time, peak RSS of a process that runs only that
variant (and in brackets how much of it the runs added to the built model), and the lines of
user code each variant needs.
"""

from __future__ import annotations

import argparse
import inspect
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import print_table  # noqa: E402

from moelens import Ablate, HookedMoE  # noqa: E402
from moelens.testing import tiny_model  # noqa: E402

LAYER, EXPERT = 1, 2
ROUTING = ("hook_router_logits", "hook_router_scores", "hook_topk_indices", "hook_topk_weights")


# -- user code of each variant (its line count goes in the table) ------------------------------------


def torch_cache(hf, ids):
    saved = {}

    def keep(index):
        def hook(module, args, output):
            saved[index] = tuple(t.detach() for t in output)  # (logits, weights, index), flattened tokens

        return hook

    handles = [layer.mlp.gate.register_forward_hook(keep(i)) for i, layer in enumerate(hf.model.layers)]
    try:
        return hf(ids).logits, saved
    finally:
        for handle in handles:
            handle.remove()


def torch_ablate(hf, ids, layer, expert):
    def reroute(module, args, output):  # Mixtral's routing rule, re-implemented by hand
        logits = output[0].clone()
        logits[:, expert] = float("-inf")
        weights, index = torch.softmax(logits.float(), dim=-1).topk(module.top_k, dim=-1)
        return logits, weights / weights.sum(dim=-1, keepdim=True), index

    handle = hf.model.layers[layer].mlp.gate.register_forward_hook(reroute)
    try:
        return hf(ids).logits
    finally:
        handle.remove()


def moelens_cache(model, ids):
    return model.run_with_cache(ids, names_filter=lambda name: name.endswith(ROUTING))


def moelens_ablate(model, ids, layer, expert):
    return model.run_with_interventions(ids, Ablate(layer, expert))


def nnsight_cache(nn_model, ids):
    import nnsight

    with nn_model.trace(ids):
        saved = nnsight.save([layer.mlp.gate.output for layer in nn_model.model.layers])
        logits = nnsight.save(nn_model.output.logits)
    return logits, saved


def nnsight_ablate(nn_model, ids, layer, expert):
    import nnsight

    with nn_model.trace(ids):
        router = nn_model.model.layers[layer].mlp.gate
        logits = router.output[0].clone()
        logits[:, expert] = float("-inf")  # Mixtral's routing rule, re-implemented by hand
        weights, index = torch.softmax(logits.float(), dim=-1).topk(router._module.top_k, dim=-1)
        router.output = (logits, weights / weights.sum(dim=-1, keepdim=True), index)
        out = nnsight.save(nn_model.output.logits)
    return out


def tl_cache(bridge, ids):
    suffixes = ("gate.hook_out", "gate.hook_expert_weights", "gate.hook_expert_indices")
    return bridge.run_with_cache(ids, names_filter=lambda name: name.endswith(suffixes))


def tl_ablate(bridge, ids, layer, expert, top_k):
    seen = {}

    def keep(logits, hook):
        seen["logits"] = logits

    def reroute(dense, hook):  # Mixtral's rule by hand; the bridge re-derives top-k from these weights
        logits = seen["logits"].clone()
        logits[:, expert] = float("-inf")
        weights, index = torch.softmax(logits.float(), dim=-1).topk(top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return torch.zeros_like(dense).scatter(-1, index, weights.to(dense.dtype))

    gate = f"blocks.{layer}.mlp.gate"
    return bridge.run_with_hooks(ids, fwd_hooks=[(f"{gate}.hook_out", keep), (f"{gate}.hook_expert_weights", reroute)])


def _lines(*fns) -> int:
    """Non-blank, non-comment lines of the functions' bodies (the user code a variant needs)."""
    count = 0
    for fn in fns:
        body = inspect.getsource(fn).splitlines()[1:]
        count += sum(1 for line in body if line.strip() and not line.strip().startswith(("#", "import")))
    return count


# -- setup -------------------------------------------------------------------------------------------


def _sizes(smoke: bool) -> tuple[dict, int, int, int]:
    if smoke:
        return dict(attn_implementation="eager", num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_local_experts=8, vocab_size=512), 1, 32, 3
    sizes = dict(
        attn_implementation="eager",  # TransformerBridge forces eager attention: every copy uses it
        num_hidden_layers=8, hidden_size=512, intermediate_size=1024, num_local_experts=8, num_attention_heads=8,
        num_key_value_heads=8, vocab_size=8000, max_position_embeddings=1024,
    )
    return sizes, 1, 512, 9


def _build(smoke: bool, only: str | None = None) -> tuple[dict, torch.Tensor, list[str]]:
    """Every variant's ``(cache, ablate, user lines)``, each on its own copy of the same random
    weights; with ``only``, just that variant (the memory column runs one per process)."""
    from transformers import AutoTokenizer

    from moelens.zoo import ZOO_DIR

    sizes, batch, seq, _ = _sizes(smoke)
    ids = torch.randint(3, sizes["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(0))
    tokenizer = AutoTokenizer.from_pretrained(ZOO_DIR / "tokenizer")  # nnsight's pipeline wants one; ids are given
    top_k = 2  # tiny_model's Mixtral routes to 2 experts

    def bare():
        hf = tiny_model("mixtral", 0, **sizes)
        return (lambda: hf(ids).logits), None, 1

    def torch_hooks():
        hf = tiny_model("mixtral", 0, **sizes)
        return (lambda: torch_cache(hf, ids)), (lambda: torch_ablate(hf, ids, LAYER, EXPERT)), _lines(torch_cache, torch_ablate)

    def hooked():
        model = HookedMoE.from_hf(tiny_model("mixtral", 0, **sizes))
        return (lambda: moelens_cache(model, ids)), (lambda: moelens_ablate(model, ids, LAYER, EXPERT)), _lines(moelens_cache, moelens_ablate)

    def raw_nnsight():
        from moelens.backends.nnsight import NNsightMoE

        nn_model = NNsightMoE.from_hf(tiny_model("mixtral", 0, **sizes), tokenizer=tokenizer).nn_model
        return (lambda: nnsight_cache(nn_model, ids)), (lambda: nnsight_ablate(nn_model, ids, LAYER, EXPERT)), _lines(nnsight_cache, nnsight_ablate)

    def nnsight_moe():
        from moelens.backends.nnsight import NNsightMoE

        model = NNsightMoE.from_hf(tiny_model("mixtral", 0, **sizes), tokenizer=tokenizer)
        return (lambda: moelens_cache(model, ids)), (lambda: moelens_ablate(model, ids, LAYER, EXPERT)), _lines(moelens_cache, moelens_ablate)

    def bridge():
        from transformer_lens.model_bridge import TransformerBridge

        folder = tempfile.mkdtemp()
        hf = tiny_model("mixtral", 0, **sizes)
        hf.save_pretrained(folder)  # the bridge reads its config from a folder or the hub
        tl = TransformerBridge.boot_transformers(folder, hf_model=hf, tokenizer=tokenizer)
        return (lambda: tl_cache(tl, ids)), (lambda: tl_ablate(tl, ids, LAYER, EXPERT, top_k)), _lines(tl_cache, tl_ablate)

    factories = {
        "bare HF forward": bare,
        "PyTorch hooks (by hand)": torch_hooks,
        "HookedMoE.run_with_cache": hooked,
        "nnsight trace (by hand)": raw_nnsight,
        "NNsightMoE.run_with_cache": nnsight_moe,
    }
    notes = []
    try:
        import transformer_lens  # noqa: F401
    except ImportError as error:
        notes.append(f"TransformerLens TransformerBridge skipped: transformer_lens does not import ({error}); "
                     "pip install 'moelens[bench]'.")
    else:
        factories["TransformerBridge.run_with_cache"] = bridge
    chosen = factories if only is None else {only: factories[only]}
    return {name: factory() for name, factory in chosen.items()}, ids, notes


def _check_ablations(variants: dict) -> None:
    reference = variants["HookedMoE.run_with_cache"][1]()
    assert not torch.equal(reference, variants["bare HF forward"][0]()), "the ablation changes nothing: no test"
    for name, (_, ablate, _) in variants.items():
        if ablate is not None:
            got = ablate()
            assert torch.equal(got, reference), f"{name}: route-ablation logits differ by {(got - reference).abs().max()}"


def _time(variants: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per variant, round-robin so machine noise hits all alike."""
    for cache, _, _ in variants.values():
        cache()
    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (cache, _, _) in variants.items():
            w0, c0 = time.perf_counter(), time.process_time()
            cache()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in variants}


def _high_water_mb() -> float:
    """This process's peak resident memory (``VmHWM``; ``ru_maxrss`` would carry the parent's peak
    across fork and exec on Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_rss_mb(name: str, smoke: bool) -> tuple[float, float]:
    """(peak RSS, peak RSS once its model was built) of a fresh process that builds only ``name``'s
    model and runs it three times."""
    args = [sys.executable, __file__, "--only", name] + (["--smoke"] if smoke else [])
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    found = json.loads(result.stdout.strip().splitlines()[-1])
    return found["peak_rss_mb"], found["built_mb"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), for CI")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # child process of the memory column
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with torch.inference_mode():
        variants, ids, notes = _build(args.smoke, args.only)
        if args.only is not None:
            built = _high_water_mb()
            for _ in range(3):
                variants[args.only][0]()
            print(json.dumps({"peak_rss_mb": _high_water_mb(), "built_mb": built}))
            return {}
        _check_ablations(variants)
        sizes, batch, seq, repeats = _sizes(args.smoke)
        medians = _time(variants, args.repeats or repeats)
    peaks = {name: (None if args.smoke else _peak_rss_mb(name, args.smoke)) for name in variants}
    bare = medians["bare HF forward"][1]
    rows = [
        (
            name,
            f"{wall * 1e3:.1f} ms",
            f"{cpu * 1e3:.1f} ms",
            f"{cpu / bare:.3f}x",
            "n/a (smoke)" if peaks[name] is None else f"{peaks[name][0]:.0f} MB (+{peaks[name][0] - peaks[name][1]:.0f})",
            str(variants[name][2]),
        )
        for name, (wall, cpu) in medians.items()
    ]
    shape = (f"Mixtral, {sizes['num_hidden_layers']} layers, d_model {sizes['hidden_size']}, "
             f"{sizes['num_local_experts']} experts, {tuple(ids.shape)} tokens, 1 thread")
    print_table(f"peers: routing cache ({shape}; median of {args.repeats or repeats}, interleaved)", rows,
                ("variant", "wall", "CPU", "CPU vs bare", "peak RSS", "user lines"))
    print(f"route-ablation of expert {EXPERT} in layer {LAYER}: identical logits through every variant")
    for note in notes:
        print(note)
    return {name: cpu / bare for name, (_, cpu) in medians.items()}


if __name__ == "__main__":
    main()
