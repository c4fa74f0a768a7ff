"""Sequence models over an item tower; `build_model(config, num_items)` makes one."""

from modrec.models.item_tower import ItemTower
from modrec.models.registry import MODELS, ModelConfig, RetrievalModel, Scorer, build_model

__all__ = ["MODELS", "ItemTower", "ModelConfig", "RetrievalModel", "Scorer", "build_model"]
