"""Sequence models over an item tower, registered by name; `build_model(config,
num_items)` makes one. Each model lives in its own file, imported here so that it
registers itself (see `registry.py` for how to add one)."""

from modrec.models import bert4rec, gru4rec, hstu, popularity, sasrec  # noqa: F401 - register
from modrec.models.item_tower import ItemTower
from modrec.models.registry import ModelConfig, build_model, model_names, register
from modrec.models.retrieval import RetrievalModel, Scorer, SequenceEncoder, Trainable

__all__ = ["ItemTower", "ModelConfig", "RetrievalModel", "Scorer", "SequenceEncoder",
           "Trainable", "build_model", "model_names", "register"]
