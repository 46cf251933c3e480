"""Tasks: evaluation datasets, prompt formats, scoring, and the re-weighting study.

One home for prompts (:mod:`~moelens.tasks.prompts`), answer extraction
(:mod:`~moelens.tasks.answers`), scoring and its statistics (:mod:`~moelens.tasks.scoring`),
the task table (:mod:`~moelens.tasks.registry`), :func:`evaluate`, :func:`reweighting_study`
and :func:`tune_router`. The zoo's training script imports its helpers from here.

>>> from moelens.tasks import format_prompt
>>> format_prompt({"text": "great !", "dataset": "sst2"})
'Review: great !\\nSentiment:'
"""

from .answers import (
    extract_math_answer,
    extract_number,
    last_boxed,
    math_answers_match,
    numbers_match,
)
from .data import (
    DATASETS,
    DatasetSpec,
    load_domain_texts,
    load_jsonl,
    load_records,
    resolve_data_dir,
)
from .demo import demo_texts, paper_domains
from .evaluate import EvalResult, evaluate
from .lora import TunedMoE, tune_router
from .prompts import few_shot_prompt, format_prompt, format_target
from .registry import TASKS, Task, get_task, task_records
from .scoring import (
    accuracy,
    bootstrap_ci,
    choice_logprobs,
    greedy_generate,
    mcnemar_p,
    paired_bootstrap,
    weighted_f1,
    wilson_ci,
)
from .study import StudyResult, reweighting_study, study_section, write_study

__all__ = [
    "DATASETS",
    "TASKS",
    "DatasetSpec",
    "EvalResult",
    "StudyResult",
    "Task",
    "TunedMoE",
    "accuracy",
    "bootstrap_ci",
    "choice_logprobs",
    "demo_texts",
    "evaluate",
    "extract_math_answer",
    "extract_number",
    "few_shot_prompt",
    "format_prompt",
    "format_target",
    "get_task",
    "greedy_generate",
    "last_boxed",
    "load_domain_texts",
    "load_jsonl",
    "load_records",
    "math_answers_match",
    "mcnemar_p",
    "numbers_match",
    "paired_bootstrap",
    "paper_domains",
    "resolve_data_dir",
    "reweighting_study",
    "study_section",
    "task_records",
    "tune_router",
    "weighted_f1",
    "wilson_ci",
    "write_study",
]
