"""Sequence models over an item tower; `build_model(config, num_items)` makes one."""

from modrec.models.item_tower import ItemTower
from modrec.models.registry import (
    MODELS,
    Model,
    ModelConfig,
    RetrievalModel,
    Scorer,
    build_model,
)

__all__ = ["MODELS", "ItemTower", "Model", "ModelConfig", "RetrievalModel", "Scorer", "build_model"]
