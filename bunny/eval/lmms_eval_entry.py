"""The entry point lmms-eval reads to find the `bunny` model (group `lmms_eval.models` in pyproject.toml).

Kept apart from `bunny.eval.lmms_eval_model` so that lmms-eval can list its models without importing torch,
transformers and Bunny, and so that a problem importing those never hides the other plugins.
"""

from typing import Any

MODEL_NAME = "bunny"
CLASS_PATH = "bunny.eval.lmms_eval_model.Bunny"


def manifest() -> Any:
    """`bunny` -> `bunny.eval.lmms_eval_model.Bunny`, a simple (text + visuals) model."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=CLASS_PATH)
