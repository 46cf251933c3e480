"""The re-weighting study's recipes (how a factor becomes an intervention; see
:func:`~moelens.tasks.study.run.expert_interventions`), apart from the study so that the CLI's
argument checks can name them without importing the study."""

__all__ = ["RECIPES"]

RECIPES = ("scale-logits", "scale-weights", "perturb")
