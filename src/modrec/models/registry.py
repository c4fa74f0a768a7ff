"""Models by name: each model file registers its name, its own options (a small config
dataclass) and a builder; nothing here lists the models.

A model's settings are one flat section in YAML and in a run's ``config.json``::

    model:
      name: sasrec        # which registered model
      dim: 50             # shared by every model (`ModelConfig`)
      max_len: 200
      num_blocks: 2       # the model's own options (`SASRecConfig`)
      block: original

`ModelConfig` validates the shared keys itself and hands the rest to the named model's
options class, which rejects keys it does not know, so a typo or another model's
option is an error that names the model's options. In Python the options are
``config.options``.

Adding a model: a new file in this package with its options, its module and a builder
decorated with ``@register("name", Options)``, plus its import in
``models/__init__.py``. A model outside this package registers itself the same way
from a module named under the ``modrec.models`` entry-point group of its distribution.
The model-contract tests run over every registered model.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Literal, Protocol

import torch
from pydantic import ConfigDict, TypeAdapter, ValidationError, model_validator
from pydantic.dataclasses import dataclass
from pydantic_core import ArgsKwargs
from torch import nn

from modrec.errors import ConfigError
from modrec.models.item_tower import ItemTower

log = logging.getLogger(__name__)


class Builder(Protocol):
    def __call__(self, config: ModelConfig, num_items: int, content: torch.Tensor | None,
                 timestamps: bool) -> nn.Module: ...


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    options: type  # the model's own config dataclass
    build: Builder


_REGISTRY: dict[str, ModelSpec] = {}
_PLUGINS_LOADED = False


def register(name: str, options: type) -> Callable[[Builder], Builder]:
    """Decorator: ``build`` makes model ``name``, whose own settings are ``options``."""
    def add(build: Builder) -> Builder:
        if name in _REGISTRY and _REGISTRY[name].build is not build:
            raise ValueError(f"a model named {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(name, options, build)
        return build
    return add


def model_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        _load_plugins()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; registered models: "
                          f"{', '.join(model_names())}")
    return _REGISTRY[name]


def model_names() -> list[str]:
    _load_plugins()
    return sorted(_REGISTRY)


def _load_plugins() -> None:
    """Import the modules other distributions list under ``modrec.models``."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for entry in entry_points(group="modrec.models"):
        try:
            entry.load()
        except Exception as err:  # noqa: BLE001 - a broken plugin must not stop modrec
            log.warning("model plugin %s (%s) failed to load: %s", entry.name, entry.value,
                        err)


# The keys every model shares; anything else in a model section is the model's own.
SHARED = ("name", "dim", "max_len", "dropout", "normalize", "item_tower", "encoders",
          "content_mlp", "combine", "id_dropout", "content_dim", "item_table", "item_sharding")


@dataclass(config=ConfigDict(extra="forbid"))
class ModelConfig:
    name: str = "sasrec"  # a registered model (see `model_names`)
    dim: int = 50
    max_len: int = 200  # the newest max_len items of a history are read
    dropout: float = 0.2
    normalize: bool = True  # L2-normalise user and item vectors (cosine scores)
    # Item representation (see models/item_tower.py): "id", "content", "id+content".
    item_tower: Literal["id", "content", "id+content"] = "id"
    encoders: list[str] = dataclasses.field(default_factory=list)  # stored embeddings used
    content_mlp: bool = False  # a small MLP instead of a linear projection of content
    combine: Literal["sum", "gate"] = "sum"  # how id+content are joined
    id_dropout: float = 0.0  # id+content: share of items whose ID vector a step drops
    content_dim: int | None = None  # filled in from the store when the model is built
    # Where the ID item table lives. "local": an nn.Embedding in every process (the
    # default; what runs written before this setting existed used). "sharded": a TorchRec
    # EmbeddingCollection split across the ranks of a torchrun world by TorchRec's
    # planner, for catalogs too big to copy into every process; needs TorchRec (README,
    # "Sharded item tables") and the sampled-softmax loss (models/sharded_items.py,
    # train/sharded.py).
    item_table: Literal["local", "sharded"] = "local"
    # How a sharded table is split: "row_wise" (each rank holds a contiguous block of
    # rows) or "table_wise" (the whole table on one rank: for several tables, not one).
    item_sharding: Literal["row_wise", "table_wise"] = "row_wise"
    options: Any = None  # the named model's own settings (its registered options class)

    @model_validator(mode="before")
    @classmethod
    def _own_options(cls, data: Any) -> Any:
        """Route the keys that are not shared to the named model's options class."""
        raw = dict(data.kwargs or {}) if isinstance(data, ArgsKwargs) else data
        if not isinstance(raw, dict):
            return data
        raw = dict(raw)
        name = str(raw.get("name", "sasrec"))
        if name not in model_names():
            raise ConfigError(f"model.name {name!r} is not a registered model; choose one of "
                              f"{', '.join(model_names())}")
        spec = model_spec(name)
        own = {key: raw.pop(key) for key in list(raw) if key not in (*SHARED, "options")}
        given = raw.get("options")
        if dataclasses.is_dataclass(given) and not isinstance(given, type):
            given = dataclasses.asdict(given)
        if not isinstance(given, dict | None):
            raise ConfigError(f"model.options must be a mapping, not {type(given).__name__}")
        try:
            raw["options"] = TypeAdapter(spec.options).validate_python({**(given or {}), **own})
        except ValidationError as err:
            allowed = [f.name for f in dataclasses.fields(spec.options)] + list(SHARED[1:])
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                                 for e in err.errors())
            raise ConfigError(f"model {spec.name!r}: {problems} (its settings: "
                              f"{', '.join(allowed)})") from None
        return raw

    def to_dict(self) -> dict[str, Any]:
        """The flat section, as written in YAML and config.json."""
        raw = dataclasses.asdict(self)
        options = raw.pop("options")
        return {**raw, **options}


def item_tower(config: ModelConfig, num_items: int, content: torch.Tensor | None) -> ItemTower:
    """The item tower every sequence model starts from. ``content`` ``(N + 1, C)`` feeds a
    content tower; zeros stand in when weights that hold the real matrix are about to be
    loaded."""
    if config.item_tower != "id" and content is None:
        if config.content_dim is None:
            raise ConfigError(f"item_tower {config.item_tower!r} needs content embeddings")
        content = torch.zeros(num_items + 1, config.content_dim)
    ids = None
    if config.item_table == "sharded":
        if config.item_tower == "content":
            raise ConfigError("model.item_table=sharded shards the ID table; a content "
                              "tower has none (use item_tower id or id+content)")
        from modrec.models.sharded_items import ShardableTable  # needs TorchRec

        ids = ShardableTable(num_items, config.dim)
    return ItemTower(num_items, config.dim, config.item_tower, content, config.content_mlp,
                     config.combine, config.id_dropout, ids)


def build_model(config: ModelConfig, num_items: int, content: torch.Tensor | None = None,
                timestamps: bool = False) -> nn.Module:
    """A fresh, untrained model for a catalog of ``num_items`` items; ``timestamps``:
    whether the dataset has them (a model may then learn from elapsed time)."""
    return model_spec(config.name).build(config, num_items, content, timestamps)
