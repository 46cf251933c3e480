"""The re-weighting study (:mod:`.run`: :func:`reweighting_study` and its expert sets; :mod:`.result`:
:class:`StudyResult` and its report section)."""

from .result import StudyResult, study_section, write_study
from .run import check_disjoint, expert_interventions, matched_random_sets, reweighting_study

__all__ = ["StudyResult", "check_disjoint", "expert_interventions", "matched_random_sets", "reweighting_study",
           "study_section", "write_study"]
