"""The demo texts shipped with the package (written by the project, one domain per file).

>>> sorted(demo_texts())
['math', 'mmlu', 'sentiment']
>>> demo_texts(limit=2)["math"][0].startswith("Question:")
True
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEMO_DIR", "demo_sentiment_records", "demo_texts", "paper_domains"]

# The paper's three domains and the evaluation split that stands for each in ../shared/data.
PAPER_DATASETS = {"sentiment": "sst2", "mmlu": "mmlu", "math": "gsm8k"}

DEMO_DIR = Path(__file__).resolve().parents[1] / "data" / "demo"


def demo_texts(limit: int | None = None) -> dict[str, list[str]]:
    """``{domain: texts}`` from ``moelens/data/demo/*.txt`` (a literal ``\\n`` in a line is a newline)."""
    texts = {}
    for path in sorted(DEMO_DIR.glob("*.txt")):
        lines = [line.rstrip("\n").replace("\\n", "\n") for line in path.read_text(encoding="utf-8").splitlines()]
        texts[path.stem] = [line for line in lines if line.strip()][:limit]
    return texts


def demo_sentiment_records(limit: int | None = None) -> list[dict]:
    """The demo reviews as SST-2 records (``text``, ``label`` 0/1, ``label_text``): labelled data that
    ships with the package, for examples and tests of evaluation, the study and router LoRA where no
    evaluation data is around.

    >>> records = demo_sentiment_records()
    >>> len(records), records[0]["label_text"], records[0]["text"].startswith("a warm")
    (40, 'positive', True)
    """
    records = []
    for i, line in enumerate(demo_texts()["sentiment"][:limit]):
        review, label_text = line.removeprefix("Review: ").rsplit("\nSentiment: ", 1)
        records.append({"id": f"demo-sentiment-{i}", "dataset": "sst2", "domain": "sentiment", "split": "demo",
                        "text": review, "label": int(label_text == "positive"), "label_text": label_text})
    return records


def paper_domains(limit: int | None = None) -> dict[str, list[str]]:
    """Texts of the paper's domains (sentiment, MMLU, math) from ``../shared/data`` (or
    ``MOELENS_DATA_DIR``) when it is there, otherwise the packaged demo texts.

    >>> sorted(paper_domains(limit=3))
    ['math', 'mmlu', 'sentiment']
    """
    from .data import load_domain_texts, resolve_data_dir

    if resolve_data_dir() is None:
        return demo_texts(limit)
    return {domain: load_domain_texts(name, limit=limit) for domain, name in PAPER_DATASETS.items()}
