"""File helpers shared by the analysis results, kept importable here: the tensor file + JSON sidecar
pair and figures live in :mod:`moelens.results`, the checkpoint in :mod:`moelens.checkpoints`."""

from moelens.checkpoints import Checkpoint, model_fingerprint
from moelens.results import load_sidecar, save_figure, save_sidecar, sidecar_paths

__all__ = ["Checkpoint", "model_fingerprint", "load_sidecar", "save_figure", "save_sidecar", "sidecar_paths"]
