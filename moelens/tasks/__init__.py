"""Tasks: evaluation datasets, prompt formats (and, later, scoring).

>>> from moelens.tasks import format_prompt
>>> format_prompt({"text": "great !", "dataset": "sst2"})
'Review: great !\\nSentiment:'
"""

from moelens.tasks.demo import demo_texts, paper_domains
from moelens.tasks.data import (
    DATASETS,
    DatasetSpec,
    format_prompt,
    format_target,
    load_domain_texts,
    load_jsonl,
    load_records,
    resolve_data_dir,
)

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "format_prompt",
    "format_target",
    "load_domain_texts",
    "load_jsonl",
    "load_records",
    "resolve_data_dir",
    "demo_texts",
    "paper_domains",
]
