"""Training data of the zoo models: the train splits of ``../shared/data``, synthetic arithmetic,
the tokenizer, and the packer that turns whole examples into block-causal training rows.

Held-out parts (never trained on): SST-2/SST-5 validation, MMLU test, GSM8K test, MATH test items
``[MATH_HELDOUT_START, ...)`` and the held-out arithmetic problems of the chosen split (below).
"""

from __future__ import annotations

import json
import pathlib
import random
import zlib

import torch

from moelens.tasks.registry import sample_arithmetic
from zoo_training import evaluate as ev

DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_TOKENIZER = pathlib.Path(__file__).resolve().parents[1] / "moelens" / "zoo" / "tokenizer"
MATH_HELDOUT_START = 4000  # MATH test items >= this index are held out for evaluation
SPECIALS = ["<pad>", "<s>", "</s>"]  # ids 0, 1, 2
ARITH_SPLITS = ("units", "hash")


# ----------------------------------------------------------------------------- arithmetic
def units_heldout(a: int, b: int, op: str) -> bool:
    """The first zoo models' held-out rule: ``(7a + 13b + [op == '-']) % 10 == 0``.

    It depends only on the units digits, so it holds out whole units-digit pairs (for ``+``
    exactly the problems whose two units digits are equal): an extrapolation test.
    """
    return (a * 7 + b * 13 + (op == "-")) % 10 == 0


def hash_bucket(a: int, b: int, op: str) -> int:
    """A digit-blind bucket 0..9 of a problem (crc32 of ``"a op b"``): 0 = test, 1 = dev."""
    return zlib.crc32(f"{a} {op} {b}".encode()) % 10


def arith_role(a: int, b: int, op: str, split: str) -> str:
    """"train", "test" or "dev" of one problem under an arithmetic split ("units" or "hash").

    Under "hash" the units-rule problems are excluded from training too (role "units"), so that
    the extrapolation test stays clean and is reported beside the hash split's test set.
    """
    if split == "units":
        return "test" if units_heldout(a, b, op) else "train"
    if units_heldout(a, b, op):
        return "units"
    bucket = hash_bucket(a, b, op)
    return "test" if bucket == 0 else "dev" if bucket == 1 else "train"


def arithmetic_problems(rng: random.Random, n: int, heldout: bool | str,
                        split: str = "units") -> list[tuple[str, str]]:
    """Synthetic "What is a + b?" / "a - b" problems (operands < 10, 20 or 100, no negative
    results) whose role under ``split`` is ``heldout`` (True = "test", False = "train", or a role
    name: "dev", "units")."""
    role = ("test" if heldout else "train") if isinstance(heldout, bool) else heldout
    return sample_arithmetic(rng, n, lambda a, b, op: arith_role(a, b, op, split) == role)


# ----------------------------------------------------------------------------------- loading
def read_jsonl(path: pathlib.Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def sentiment_train_rows(data: pathlib.Path, dev_size: int, seed: int) -> tuple[list, list]:
    """(train, dev) of (text, binary label): SST-2 train + SST-5 train (binarised); ``dev_size``
    SST-2 train sentences (and their SST-5 copies) are kept apart for checkpoint selection."""
    sst2 = [(r["text"], int(r["label"])) for r in read_jsonl(data / "sst2" / "train.jsonl")]
    dev = []
    if dev_size:
        order = list(range(len(sst2)))
        random.Random(seed + 3).shuffle(order)
        dev = [sst2[i] for i in sorted(order[:dev_size])]
    dev_texts = {t for t, _ in dev}
    rows = [r for r in sst2 if r[0] not in dev_texts]
    for r in read_jsonl(data / "sst5" / "train.jsonl"):
        y = ev.sst5_to_binary(r["label"])
        if y is not None and r["text"] not in dev_texts:
            rows.append((r["text"], y))
    return rows, dev


def load_training_examples(data: pathlib.Path, rng: random.Random, tiny: bool, *,
                           arith_split: str = "units", arith_examples: int = 20000,
                           sentiment_dev: int = 0, seed: int = 0) -> tuple[dict[str, list], dict]:
    """-> ({domain: [(prompt, answer)]}, dev sets). The answer gets the extra loss weight."""
    sent_rows, sent_dev = sentiment_train_rows(data, sentiment_dev, seed)
    sent = [(ev.sentiment_prompt(t), ev.SENTIMENT_LABEL_WORDS[y]) for t, y in sent_rows]
    mmlu = []
    for split in ("dev", "validation"):
        for r in read_jsonl(data / "mmlu" / f"{split}.jsonl"):
            mmlu.append((ev.mmlu_prompt(r["text"], r["choices"]), " " + r["answer"]))
    gsm = [(ev.math_prompt(r["text"]), " " + r["answer"].strip())
           for r in read_jsonl(data / "gsm8k" / "train.jsonl")]
    mth = [(ev.math_prompt(r["text"]), " " + r["answer"].strip())
           for r in read_jsonl(data / "math" / "test.jsonl")[:MATH_HELDOUT_START]]
    arith = [(ev.math_prompt(q), " " + a)
             for q, a in arithmetic_problems(rng, arith_examples, heldout=False, split=arith_split)]
    out = {"sentiment": sent, "mmlu": mmlu, "gsm8k": gsm, "math": mth, "arith": arith}
    dev = {"sentiment": sent_dev}
    if arith_split == "hash":
        dev["arith"] = arithmetic_problems(random.Random(seed + 4), 300, "dev", split="hash")
    if tiny:
        out = {k: v[:100] for k, v in out.items()}
        dev = {k: v[:16] for k, v in dev.items()}
    return out, dev


def load_eval_sets(data: pathlib.Path, seed: int, limit: int | None, arith_split: str = "units") -> dict:
    """The held-out evaluation sets (first ``limit`` rows of each when given)."""
    rng = random.Random(seed + 1)
    sst2 = read_jsonl(data / "sst2" / "validation.jsonl")
    mmlu = read_jsonl(data / "mmlu" / "test.jsonl")
    rng.shuffle(mmlu)
    gsm = read_jsonl(data / "gsm8k" / "test.jsonl")
    mth = read_jsonl(data / "math" / "test.jsonl")[MATH_HELDOUT_START:]
    arith = arithmetic_problems(random.Random(seed + 2), 300, heldout=True, split=arith_split)
    lim = (lambda xs, n: xs[: min(n, limit)]) if limit else (lambda xs, n: xs[:n])
    sets = {"sst2": lim(sst2, len(sst2)), "mmlu": lim(mmlu, 500), "gsm8k": lim(gsm, 200),
            "math": lim(mth, 200), "arith": lim(arith, 300)}
    if arith_split == "hash":
        sets["arith_units"] = lim(arithmetic_problems(random.Random(seed + 2), 300, "units", "hash"), 300)
    return sets


# --------------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts: list[str], vocab_size: int, out_dir: pathlib.Path):
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token=None, padding_side="right",
                                   model_max_length=512)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def get_tokenizer(path: pathlib.Path, texts: list[str], vocab_size: int, retrain: bool):
    from transformers import AutoTokenizer

    if retrain or not (path / "tokenizer.json").exists():
        print(f"training BPE tokenizer (vocab {vocab_size}) -> {path}", flush=True)
        train_tokenizer(texts, vocab_size, path)
    return AutoTokenizer.from_pretrained(path)


# ---------------------------------------------------------------------------------- batching
OTHER_MIX = {"mmlu": 0.30, "gsm8k": 0.25, "math": 0.20, "arith": 0.25}  # split of the non-sentiment share


def domain_mix(sentiment_share: float, mix: str | None = None) -> dict[str, float]:
    """Sampling probability of each domain: ``mix`` ("sentiment=0.4,arith=0.4,...") when given,
    else ``sentiment_share`` and :data:`OTHER_MIX` for the rest."""
    if mix:
        pairs = [item.split("=") for item in mix.split(",")]
        return {k.strip(): float(v) for k, v in pairs}
    return {"sentiment": sentiment_share,
            **{k: round(v * (1 - sentiment_share), 4) for k, v in OTHER_MIX.items()}}


def encode_examples(tokenizer, examples, answer_weight: float, prompt_weight: float = 1.0):
    """-> list of (token ids, per-token loss weight of *predicting* that token): ``prompt_weight``
    for the prompt's tokens after BOS, ``answer_weight`` for the answer's, 1 for EOS."""
    prompts = tokenizer([p for p, _ in examples], add_special_tokens=True)["input_ids"]
    answers = tokenizer([a for _, a in examples], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    out = []
    for p, a in zip(prompts, answers):
        toks = p + a + [eos]
        w = [0.0] + [prompt_weight] * (len(p) - 1) + [answer_weight] * len(a) + [1.0]
        out.append((toks, w))
    return out


class Packer:
    """Packs whole examples (BOS prompt answer EOS) into fixed-length rows, sampled by domain weight.

    ``word_dropout`` (per domain) drops each token strictly inside ``keep=(head, tail)`` with that
    probability each time the example is drawn: an augmentation against memorising a small set.
    """

    def __init__(self, encoded: dict[str, list], weights: dict[str, float], seq_len: int, seed: int,
                 word_dropout: dict[str, tuple[float, int, int]] | None = None):
        self.enc = {k: [e for e in v if len(e[0]) <= seq_len] for k, v in encoded.items()}
        self.dropped = {k: len(encoded[k]) - len(self.enc[k]) for k in encoded}
        self.domains = [k for k in weights if self.enc.get(k)]
        self.w = [weights[k] for k in self.domains]
        self.seq_len = seq_len
        self.rng = random.Random(seed)
        self.pending = None
        self.token_counts = {k: 0 for k in self.domains}
        self.word_dropout = word_dropout or {}

    def _sample(self):
        d = self.rng.choices(self.domains, self.w)[0]
        toks, tw = self.rng.choice(self.enc[d])
        if d in self.word_dropout:
            p, head, tail = self.word_dropout[d]
            keep = [i < head or i >= len(toks) - tail or self.rng.random() >= p for i in range(len(toks))]
            toks = [t for t, k in zip(toks, keep) if k]
            tw = [w for w, k in zip(tw, keep) if k]
        return d, (toks, tw)

    def batch(self, bsz: int, pad_id: int):
        """-> ids, 2-D mask (1 = real token), loss weights, position ids, example index per token.

        :func:`block_causal_mask` turns the example indices into the 4-D mask with which each
        example attends only to itself; positions restart at 0, so a packed example is seen
        exactly as it would be alone (as at evaluation time).
        """
        S = self.seq_len
        ids, wts, mask, pos_ids, doc = [], [], [], [], []
        for _ in range(bsz):
            r_ids, r_w, r_pos, r_doc = [], [], [], []
            k = 0
            while True:
                d, (toks, tw) = self.pending if self.pending else self._sample()
                self.pending = None
                if len(r_ids) + len(toks) > S:
                    self.pending = (d, (toks, tw))
                    break
                r_ids += toks
                r_w += tw
                r_pos += range(len(toks))
                r_doc += [k] * len(toks)
                self.token_counts[d] += len(toks)
                k += 1
            n = len(r_ids)
            ids.append(r_ids + [pad_id] * (S - n))
            wts.append(r_w + [0.0] * (S - n))
            mask.append([1] * n + [0] * (S - n))
            pos_ids.append(r_pos + list(range(S - n)))
            doc.append(r_doc + [-1] * (S - n))
        return (torch.tensor(ids), torch.tensor(mask), torch.tensor(wts), torch.tensor(pos_ids),
                torch.tensor(doc))


def block_causal_mask(doc: torch.Tensor) -> torch.Tensor:
    """``[batch 1 pos pos]`` bool mask: causal within an example (same index in ``doc``), and pads
    (index -1) attend to each other causally so that no row of the mask is empty."""
    S = doc.shape[-1]
    causal = torch.tril(torch.ones(S, S, dtype=torch.bool, device=doc.device))
    return ((doc[:, :, None] == doc[:, None, :]) & causal)[:, None]
