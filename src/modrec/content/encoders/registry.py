"""Encoders by name: `build_encoder(spec, dataset)` turns an encoder spec into an encoder.

Specs (``--encoder``): ``text``, ``image``, ``video``, ``audio``, ``tags``, a model after
a colon (``text:sentence-transformers/all-mpnet-base-v2``, ``image:timm:resnet50``), the
I3D clip network with its sampling settings (``video:i3d``, ``video:i3d:frames=16:clips=1``:
`modrec.content.encoders.i3d`), a
column after a colon for tags (``tags:tmdb_genres``) and text (``text:transcript``,
``text:video_text:MODEL``; any item column, those computed by ``modrec transcribe``
included), a CLIP-style model's image or text tower (``clip:PATH``, ``clip-text:PATH``:
`modrec.content.encoders.clip`), a precomputed matrix that the named dataset ships
(``vggish`` for lastfm-2k), or the item vectors a trained run learned from interactions
(``run:runs/ml-1m-sasrec``).

The table maps the part of a spec before the first colon (the modality) to a `Builder`,
which gets the spec taken apart (`Spec`), the dataset and the device. Adding an encoder:
a module in this package with the encoder and its builder, and one `register` line
below. The lines are here, not decorators in each module as `modrec.models.register`
has them, because `build_encoder` itself makes the precomputed encoder of a matrix a
named dataset ships: with decorators the precomputed module would import this one and
this one it (a circle). Their order is the order the list of choices names them in.
"""

from __future__ import annotations

from dataclasses import dataclass

from modrec import paths
from modrec.content.encoders import audio, clip, image, precomputed, tags, text, video
from modrec.content.encoders.base import Builder, Encoder, Spec
from modrec.content.store import store_name
from modrec.data import Dataset
from modrec.data.public import NAMED
from modrec.errors import UsageError


@dataclass(frozen=True)
class Registered:
    build: Builder
    usage: str | None  # how the list of choices names it; None: left out of the list
    needs_option: bool  # ``MODALITY`` alone is no spec: ``clip:PATH``, ``run:RUN_DIR``


_REGISTRY: dict[str, Registered] = {}


def register(modality: str, build: Builder, usage: str | None = "",
             needs_option: bool = False) -> None:
    """``MODALITY[:OPTION]`` specs are built by ``build``. ``usage``: how the list of
    choices names it ("" for ``modality`` itself, None to leave it out)."""
    if modality in _REGISTRY and _REGISTRY[modality].build is not build:
        raise ValueError(f"an encoder {modality!r} is already registered")
    _REGISTRY[modality] = Registered(build, modality if usage == "" else usage, needs_option)


register("text", text.build)
register("image", image.build)
register("video", video.build)
register("audio", audio.build)
register("tags", tags.build)
register("clip", clip.build, "clip:MODEL", needs_option=True)
register("clip-text", clip.build, "clip-text:MODEL", needs_option=True)
register("run", precomputed.build_run, None, needs_option=True)


def shipped_matrices(dataset: Dataset) -> dict[str, tuple[str, str, str]]:
    """Spec -> (matrix, row ids, id column) of the vectors a named dataset ships, paths
    relative to the data directory; none for another dataset."""
    return NAMED[dataset.name].precomputed if dataset.name in NAMED else {}


def build_encoder(spec: str, dataset: Dataset, device: str = "cpu") -> Encoder:
    """The encoder ``spec`` names (see the module docstring), for ``dataset``'s items."""
    modality, _, option = spec.partition(":")
    parsed = Spec(spec, modality, option, store_name(spec))
    shipped = shipped_matrices(dataset)
    if spec in shipped:
        matrix, rows, id_column = shipped[spec]
        root = paths.data_dir()
        return precomputed.PrecomputedEncoder.from_files(parsed.name, root / matrix,
                                                         root / rows, id_column)
    kind = _REGISTRY.get(modality)
    if kind is None or (kind.needs_option and not option):
        known = [k.usage for k in _REGISTRY.values() if k.usage] + sorted(shipped)
        raise UsageError(f"unknown encoder {spec!r}; choose from {', '.join(known)} "
                         "(optionally NAME:MODEL)")
    return kind.build(parsed, dataset, device)

