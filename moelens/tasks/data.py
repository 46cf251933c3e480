"""Evaluation data: JSONL loading, dataset resolution (local folder, else the HF hub), prompts.

Records follow the schema of the project's shared data folder (see its README): every record
has ``id``, ``dataset``, ``domain`` (sentiment | mmlu | math), ``split`` and ``text``;
sentiment adds ``label``/``label_text``, MMLU ``choices``/``label``/``answer`` (letter)/
``subject``, gsm8k and MATH ``answer``/``solution``. Records fetched from the hub are converted
to the same schema, so prompts do not depend on where the data came from.

Where a named dataset is looked for, in order:

1. ``{data_dir}/{name}/{split}.jsonl`` with ``data_dir`` the argument, else the environment
   variable ``MOELENS_DATA_DIR``, else ``../shared/data`` relative to the working directory if
   that folder exists;
2. the HuggingFace hub through ``datasets`` (imported only then), when online.

Prompt formats live in :mod:`moelens.tasks.prompts` (``format_prompt`` is re-exported here).

>>> format_prompt({"text": "a gem .", "domain": "sentiment"})
'Review: a gem .\\nSentiment:'
"""

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataNotFoundError, InvalidInputError
from .answers import last_boxed
from .prompts import format_prompt, format_target

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "format_prompt",
    "format_target",
    "load_domain_texts",
    "load_jsonl",
    "load_records",
    "resolve_data_dir",
]

Record = dict[str, Any]



# ---------------------------------------------------------------------- hub row converters
def _sentiment(names: tuple[str, ...], text_key: str) -> Callable[[Mapping], Record]:
    def convert(row: Mapping) -> Record:
        label = int(row["label"])
        return {"text": row[text_key], "label": label,
                "label_text": names[label] if 0 <= label < len(names) else None}
    return convert


def _mmlu(row: Mapping) -> Record:
    label = int(row["answer"])
    return {"text": row["question"], "choices": list(row["choices"]), "label": label,
            "answer": "ABCD"[label], "subject": row["subject"]}


def _gsm8k(row: Mapping) -> Record:
    # gsm8k solutions end with "#### <number>"; the number is the answer.
    final = row["answer"].rsplit("####", 1)[-1].strip().replace(",", "")
    return {"text": row["question"], "answer": final, "solution": row["answer"]}


def _math(row: Mapping) -> Record:
    return {"text": row["problem"], "answer": last_boxed(row["solution"]),
            "solution": row["solution"], "subject": row.get("type"), "level": row.get("level")}


@dataclass(frozen=True)
class DatasetSpec:
    """Where a named dataset lives on the hub and how its rows map to the local schema."""

    name: str
    domain: str  # sentiment | mmlu | math
    default_split: str
    hub_id: str
    convert: Callable[[Mapping], Record]
    hub_splits: Mapping[str, str] = field(default_factory=dict)  # our split -> hub split
    hub_configs: tuple[str | None, ...] = (None,)  # loaded in order and concatenated


_MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                  "number_theory", "prealgebra", "precalculus")

DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec("sst2", "sentiment", "validation", "stanfordnlp/sst2",
                    _sentiment(("negative", "positive"), "sentence"),
                    {"train": "train", "validation": "validation"}),
        DatasetSpec("sst5", "sentiment", "validation", "SetFit/sst5",
                    _sentiment(("very negative", "negative", "neutral", "positive",
                                "very positive"), "text"),
                    {"train": "train", "validation": "validation", "test": "test"}),
        # The hub's yelp_polarity has train/test only (and is not lower-cased like the local one).
        DatasetSpec("yelp", "sentiment", "validation", "fancyzhx/yelp_polarity",
                    _sentiment(("negative", "positive"), "text"),
                    {"train": "train", "test": "test"}),
        # Customer reviews (Hu & Liu 2004) as SetFit/CR: train/test, 64% positive in test.
        DatasetSpec("cr", "sentiment", "test", "SetFit/CR", _sentiment(("negative", "positive"), "text"),
                    {"train": "train", "test": "test"}),
        DatasetSpec("mmlu", "mmlu", "test", "cais/mmlu", _mmlu,
                    {"dev": "dev", "validation": "validation", "test": "test"}, ("all",)),
        DatasetSpec("gsm8k", "math", "test", "openai/gsm8k", _gsm8k,
                    {"train": "train", "test": "test"}, ("main",)),
        # The hub's test split is all 5,000 MATH problems; the local file omits MATH-500.
        DatasetSpec("math", "math", "test", "EleutherAI/hendrycks_math", _math,
                    {"train": "train", "test": "test"}, _MATH_SUBJECTS),
    )
}


# ---------------------------------------------------------------------- loading
def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """``data_dir``, else ``$MOELENS_DATA_DIR``, else ``../shared/data`` if it exists, else None."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get("MOELENS_DATA_DIR")
    if env:
        return Path(env)
    guess = Path.cwd() / ".." / "shared" / "data"
    return guess if guess.is_dir() else None


def load_jsonl(path: str | Path, limit: int | None = None) -> list[Record]:
    """The first ``limit`` records (all if None) of a JSONL file; blank lines are skipped."""
    if limit is not None and limit < 0:
        raise InvalidInputError(f"limit must be >= 0 or None, got {limit}.")
    records: list[Record] = []
    lineno = 0
    try:
        with Path(path).open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):  # noqa: B007 (the line number names a bad byte's line)
                if limit is not None and len(records) >= limit:
                    break
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InvalidInputError(f"{path}:{lineno} is not valid JSON: {exc.msg}; write one JSON object per line.") from None
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} near line {lineno + 1}); "
                                "save it as UTF-8 JSONL (e.g. iconv -f latin1 -t utf-8).") from None
    return records


def _load_from_hub(spec: DatasetSpec, split: str, limit: int | None, looked: str) -> list[Record]:
    if split not in spec.hub_splits:
        raise InvalidInputError(
            f"{spec.name!r} has no split {split!r} on the hub ({spec.hub_id}: "
            f"{sorted(spec.hub_splits)}), and {looked}."
        )
    try:
        import datasets  # heavy and optional: only needed for the hub
    except ImportError as exc:
        raise DataNotFoundError(
            f"{spec.name!r} split {split!r} was not found locally ({looked}); loading it from "
            f"the HF hub ({spec.hub_id}) needs the `datasets` package: `pip install datasets`, "
            f"or pass data_dir= (or set MOELENS_DATA_DIR) to a folder holding "
            f"{spec.name}/{split}.jsonl."
        ) from exc
    rows: list[Mapping] = []
    try:
        for config in spec.hub_configs:
            for row in datasets.load_dataset(spec.hub_id, config, split=spec.hub_splits[split]):
                if limit is not None and len(rows) >= limit:
                    break
                rows.append(row)
    except Exception as exc:  # network, auth, renamed repo: all mean "not available here"
        raise DataNotFoundError(
            f"could not load {spec.hub_id} ({spec.name!r}, split {split!r}) from the HF hub: "
            f"{type(exc).__name__}: {exc}. Offline? Pass data_dir= (or set MOELENS_DATA_DIR) to "
            f"a folder holding {spec.name}/{split}.jsonl; {looked}."
        ) from exc
    return [
        {"id": f"{spec.name}-{split}-{i}", "dataset": spec.name, "domain": spec.domain,
         "split": split, **spec.convert(row)}
        for i, row in enumerate(rows)
    ]


def load_records(
    name_or_path: str | Path,
    split: str | None = None,
    limit: int | None = None,
    data_dir: str | Path | None = None,
) -> list[Record]:
    """Records of a named dataset (``DATASETS``: sst2, sst5, yelp, mmlu, gsm8k, math), of a
    ``.jsonl`` file, or of a folder holding ``{split}.jsonl``.

    ``split`` defaults to the dataset's evaluation split (``DATASETS[name].default_split``:
    validation for sst2/sst5/yelp, test for mmlu/gsm8k/math). Named datasets are read from the
    local data folder (see the module docstring), else from the HF hub.
    """
    name = str(name_or_path)
    if name in DATASETS:
        spec = DATASETS[name]
        split = split or spec.default_split
        root = resolve_data_dir(data_dir)
        if root is None:
            looked = "no local data folder (data_dir, MOELENS_DATA_DIR, ../shared/data)"
        else:
            folder = root / name
            if (folder / f"{split}.jsonl").is_file():
                return load_jsonl(folder / f"{split}.jsonl", limit)
            if folder.is_dir():  # the dataset is here, the split is not: a typo, not "go online"
                have = sorted(p.stem for p in folder.glob("*.jsonl"))
                raise InvalidInputError(f"{folder} has no {split}.jsonl; splits there: {have}.")
            looked = f"{folder} does not exist"
        return _load_from_hub(spec, split, limit, looked)
    path = Path(name_or_path)
    if path.is_file():
        return load_jsonl(path, limit)
    if path.is_dir():
        return load_jsonl(_split_file(path, split), limit)
    raise InvalidInputError(
        f"{name!r} is neither a known dataset ({sorted(DATASETS)}) nor an existing file or folder."
    )


def _split_file(folder: Path, split: str | None) -> Path:
    """The JSONL file of ``split`` in ``folder``: the named split, else the dataset's default, else the
    folder's only file; the message lists the splits there (and never names an option a caller lacks)."""
    have = sorted(p.stem for p in folder.glob("*.jsonl"))
    if split is None and len(have) == 1:
        return folder / f"{have[0]}.jsonl"
    split = split or (DATASETS[folder.name].default_split if folder.name in DATASETS else None)
    if split is not None and (folder / f"{split}.jsonl").is_file():
        return folder / f"{split}.jsonl"
    if not have:
        raise InvalidInputError(f"folder {folder} holds no .jsonl file; point at a JSONL file, or a folder holding one.")
    wanted = f"has no {split}.jsonl; it holds" if split else "holds"
    raise InvalidInputError(f"folder {folder} {wanted} splits {have}: name one file, e.g. {folder / (have[0] + '.jsonl')}.")


def load_domain_texts(
    name_or_path: str | Path,
    split: str | None = None,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    *,
    prompt: bool = True,
) -> list[str]:
    """Texts of a dataset (see ``load_records``): formatted prompts (``format_prompt``) by
    default, or the raw ``text`` fields with ``prompt=False``."""
    records = load_records(name_or_path, split, limit, data_dir)
    return [format_prompt(r) if prompt else r["text"] for r in records]
