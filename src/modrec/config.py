"""The typed run configuration and how it is assembled: what training writes into a
run directory and what evaluation, serving and the CLI read back. It sits below
`train` and `serve` so that both may import it.

Precedence, lowest first: the dataclass defaults below, ``configs/<model>.yaml``,
``configs/<dataset>/<model>.yaml`` (the published settings), a ``--config FILE``, and
``--set section.key=value`` overrides. Unknown keys and wrong types fail at once, with
the offending key named (pydantic does the checking).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from modrec.errors import ConfigError
from modrec.models.registry import SHARED, ModelConfig, model_spec

_STRICT = ConfigDict(extra="forbid")


@dataclass(config=_STRICT)
class DataConfig:
    dataset: str = "ml-100k"  # a named dataset or a path
    format: str | None = None  # importer format for paths; detected when None
    # Which source columns hold the user, item, timestamp, rating, for tables whose
    # names are not recognised: {"user": "uid", "item": "iid", "timestamp": "ts"}.
    columns: dict[str, str] | None = None
    # "cold-items": leave-one-out with 10% of the items withheld from training;
    # "loo-no-valid": the HSTU repository's protocol (no validation, fixed epochs)
    split: Literal["loo", "temporal", "cold-items", "loo-no-valid"] = "loo"
    # Under torchrun: each rank reads only its block of users from the cached dataset
    # instead of the whole dataset (see modrec/distributed.py); one process ignores it.
    rank_users: bool = False
    # Consecutive repeated events (the same user and item back to back), which make an
    # item its own next target: "drop" all but the first of each run, or "keep" them.
    # None: drop them from a file, keep them in a named dataset (its published numbers
    # were measured with them: yelp and amazon-scientific have some).
    consecutive_repeats: Literal["drop", "keep"] | None = None
    # Keep only each user's last N events before splitting (the MicroLens protocol: 13);
    # None keeps every event.
    keep_last: Annotated[int, Field(ge=3)] | None = None


@dataclass(config=_STRICT)
class LossConfig:
    name: Literal["softmax", "sampled_softmax"] = "sampled_softmax"
    num_negatives: Annotated[int, Field(ge=1)] = 128  # sampled_softmax only
    # sampled_softmax: draw the negatives once per sequence (shared by its positions; one
    # batched product, cheap on a CPU) or afresh for every position (the HSTU
    # repository's sampler; a B x L x K gather of item vectors, cheap on a GPU)
    negatives_per: Literal["sequence", "position"] = "sequence"
    temperature: Annotated[float, Field(gt=0.0)] = 0.05  # logits are divided by this


@dataclass(config=_STRICT)
class TrainConfig:
    epochs: Annotated[int, Field(ge=1)] = 200  # an upper bound; early stopping usually ends sooner
    batch_size: Annotated[int, Field(ge=1)] = 128
    lr: Annotated[float, Field(gt=0.0)] = 1e-3
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)],
                 Annotated[float, Field(ge=0.0, lt=1.0)]] = (0.9, 0.98)
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    # "cosine": the learning rate falls from lr at epoch 1 along half a cosine towards
    # lr_min, reached after lr_decay_epochs epochs (default: epochs); set once per epoch.
    # Early stopping still applies: the horizon is fixed, not the epoch training stops at.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    lr_min: Annotated[float, Field(ge=0.0)] = 0.0
    lr_decay_epochs: Annotated[int, Field(ge=1)] | None = None
    # Polyak averaging: validate, select and keep an exponential moving average of the
    # weights, updated after every optimiser step with this decay (0.998 averages over
    # roughly the last 500 steps). None: the raw weights.
    ema_decay: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    eval_every: Annotated[int, Field(ge=1)] = 1  # epochs between validation passes
    # validation passes without a better NDCG@10 before stopping
    patience: Annotated[int, Field(ge=1)] = 10
    seed: int = 42
    # Each shuffled batch runs as this many length-sorted slices, each padded only to its
    # own longest sequence; their gradients add up to the whole batch's, so this changes
    # the work, not what is learned. 1: one slice (fewer, larger kernels: try it on a GPU).
    length_slices: Annotated[int, Field(ge=1)] = 4
    # Users per evaluation block. Small blocks keep the (B, L, L) attention intermediates
    # in cache: on ML-1M, HSTU evaluates all users in 1.8 s with 128 and 3.2 s with 1024.
    eval_batch_size: Annotated[int, Field(ge=1)] = 128
    device: str = "cpu"
    # model.item_table=sharded only: the step size of the sharded ID table's row-wise
    # Adagrad (TorchRec's fused optimiser; the rest of the model keeps AdamW at lr).
    # Constant: the learning-rate schedule moves lr only. ml-100k SASRec, 15 epochs, one
    # process: best valid NDCG@10 0.079 at 0.01, 0.095 at 0.05, 0.093 at 0.2 (a local
    # table under AdamW: 0.082).
    table_lr: Annotated[float, Field(gt=0.0)] = 0.05
    # A trained run folder to start from instead of a fresh initialisation (the same
    # model; its item rows matched by external id, new items fresh, the optimiser
    # fresh): train/init_from.py. None: a fresh start.
    init_from: str | None = None

    @property
    def lr_horizon(self) -> int:
        """The epochs over which a decaying learning rate reaches ``lr_min``."""
        return self.lr_decay_epochs or self.epochs


@dataclass(config=_STRICT)
class RunConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    source: list[str] = dataclasses.field(default_factory=list)  # the files merged in

    def to_dict(self) -> dict[str, Any]:
        """Plain values, every section flat (the model's own options beside the shared
        ones), as in YAML."""
        raw = dataclasses.asdict(self)
        raw["model"] = self.model.to_dict()
        return raw


def config_dir() -> Path:
    """``$MODREC_CONFIG_DIR``, else the ``configs/`` folder of the source checkout."""
    env = os.environ.get("MODREC_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "configs"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lr=3e-4`` -> (["train", "lr"], 0.0003); values are read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: the value is not YAML "
                          f"({' '.join(str(err).split())})") from None
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError(f"override {text!r}: expected section.key=value")
    return keys, parsed


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path} is not a YAML file modrec can read: "
                          f"{' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def build_config(
    dataset: str | None = None,
    model: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """Assemble a RunConfig from the layers described in the module docstring."""
    raw: dict[str, Any] = {}
    sources: list[str] = []
    file_raw = _read_yaml(Path(config_file)) if config_file is not None else None
    if file_raw is not None:
        dataset = dataset or file_raw.get("data", {}).get("dataset")
        model = model or file_raw.get("model", {}).get("name")
    if model is not None:
        for path in (config_dir() / f"{model}.yaml", config_dir() / f"{dataset}" / f"{model}.yaml"):
            if path.exists():
                raw = _merge(raw, _read_yaml(path))
                sources.append(str(path))
        if "name" not in raw.get("model", {}):
            # -m names a preset (configs/<dataset>/hstu-large.yaml); a preset that sets
            # model.name decides the architecture, otherwise -m is the architecture.
            raw = _merge(raw, {"model": {"name": model}})
    if file_raw is not None:
        raw = _merge(raw, file_raw)
        sources.append(str(config_file))
    if dataset is not None:
        raw = _merge(raw, {"data": {"dataset": dataset}})
    for text in overrides or []:
        keys, value = parse_override(text)
        update: dict[str, Any] = value
        for key in reversed(keys):
            update = {key: update}
        raw = _merge(raw, update)
    raw.pop("source", None)
    raw.pop("paper", None)
    raw.pop("command", None)
    config = config_from_dict({**raw, "source": sources})
    dataset_path = absolute_dataset(config.data.dataset, config.data.format)
    if dataset_path != config.data.dataset:
        config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, dataset=dataset_path))
    return config


def absolute_dataset(dataset: str, format: str | None = None) -> str:
    """A dataset path that exists, made absolute; a named dataset (or anything else) as
    it is. A run records where its data was, so that it can be resumed or refitted
    from any directory; its contents are pinned by a fingerprint beside it."""
    from modrec.data import named_dataset
    from modrec.data.state_schema import is_postgres_url, redact

    if is_postgres_url(dataset):
        if redact(dataset) != dataset:
            raise ConfigError(f"{redact(dataset)}: the run records its dataset in its "
                              "config.json, so a password in the URL would be written "
                              "there; leave it out and give it as PGPASSWORD or in "
                              "~/.pgpass (libpq reads both)")
        return dataset
    if named_dataset(dataset, format) is not None:
        return dataset
    path = Path(dataset).expanduser()
    return str(path.resolve()) if path.exists() else dataset


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    try:
        config = TypeAdapter(RunConfig).validate_python(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
            for e in err.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
    out_of_range = _model_ranges(config.model)
    if out_of_range:
        raise ConfigError(f"invalid configuration: {'; '.join(out_of_range)}")
    return config


def _model_ranges(model: ModelConfig) -> list[str]:
    """The model settings whose types pass but whose values no model can be built with:
    sizes and counts below 1, dropout rates outside [0, 1). The options of every model
    follow one naming rule (``num_*`` counts, ``*_dim`` widths), so a model's own
    options are checked here too, without a list of models."""
    problems = [f"model.{key}: must be at least 1, got {value}"
                for key, value in (("dim", model.dim), ("max_len", model.max_len))
                if value < 1]
    problems += [f"model.{key}: must be at least 0 and below 1, got {value}"
                 for key, value in (("dropout", model.dropout), ("id_dropout", model.id_dropout))
                 if not 0.0 <= value < 1.0]
    if dataclasses.is_dataclass(model.options) and not isinstance(model.options, type):
        for key, value in dataclasses.asdict(model.options).items():
            sized = key.startswith("num_") or key.endswith("_dim")
            if sized and isinstance(value, int) and not isinstance(value, bool) and value < 1:
                problems.append(f"model.{key}: must be at least 1, got {value}")
    return problems


# config.json files carry ``run_format``; those without one were written before the
# model section split into shared and per-model settings (2026-12-03).
RUN_FORMAT = 2
WRITTEN_BESIDE = ("content_encoders", "dataset_info", "protocol", "resumed", "run_format",
                  "world_size", "initialised_from")


def load_config(path: str | Path) -> RunConfig:
    """The config.json of a run directory (of any format modrec has written)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} is not a readable run configuration ({err}); restore it "
                          "from the run that wrote it, or train into a new folder") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object of sections")
    run_format = raw.get("run_format", 1)
    for extra in WRITTEN_BESIDE:
        raw.pop(extra, None)
    if run_format < 2:
        raw = _from_format_1(raw)
    return config_from_dict(raw)


# Format 1 listed every model's options in one flat section, two of them prefixed.
_RENAMED = {"sasrec": {"sasrec_block": "block"}, "bert4rec": {"bert4rec_block": "block"}}


def _from_format_1(raw: dict[str, Any]) -> dict[str, Any]:
    """Keep the shared model settings and the named model's own; the other models'
    options were inert for it and are dropped."""
    # Runs before 2026-12-01 trained on whole epochs sorted into length buckets.
    raw.get("train", {}).pop("bucket", None)
    model = dict(raw.get("model", {}))
    name = str(model.get("name", "sasrec"))
    for old, new in _RENAMED.get(name, {}).items():
        if old in model:
            model[new] = model.pop(old)
    own = {f.name for f in dataclasses.fields(model_spec(name).options)}
    raw["model"] = {key: value for key, value in model.items() if key in (*SHARED, *own)}
    return raw


# Settings a resumed run may change: they decide how long and how it goes on training,
# not what model it is. Any other change would continue one model as another.
RESUMABLE_SECTIONS = ("train",)
DERIVED = {"model.content_dim"}  # filled in from the embedding store, not chosen


def config_changes(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """``{"section.key": (old, new)}`` for every setting that differs (the list of
    merged files, ``source``, is not a setting)."""
    def flat(config: RunConfig) -> dict[str, Any]:
        return {f"{section}.{key}": value for section, values in config.to_dict().items()
                if isinstance(values, dict) for key, value in values.items()}

    before, after = flat(old), flat(new)
    # A dataset path recorded relative (before 2026-12-04) names the same data as its
    # absolute form; the fingerprint decides whether the contents are the same.
    for values, config in ((before, old), (after, new)):
        values["data.dataset"] = absolute_dataset(config.data.dataset, config.data.format)
    return {key: (before.get(key), after.get(key)) for key in sorted(before.keys() | after.keys())
            if before.get(key) != after.get(key) and key not in DERIVED}
