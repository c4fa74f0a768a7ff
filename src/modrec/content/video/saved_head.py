"""A trained single-label head as a file (`modrec classify --single-label --save`,
``--apply``): safetensors, so loading it runs no code (a pickle would), with metadata
naming what applying it needs: the classes, the head's settings and shape, and each
encoder's name and version, so that a store holding another version's vectors is
refused rather than read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modrec.content.store import EmbeddingStore
from modrec.content.video.heads import HeadSettings, SequenceHead, TrainedHead
from modrec.errors import NotFoundError, UsageError

FORMAT = "modrec-class-head"  # the metadata's "format"


def save_head(path: Path, trained: TrainedHead, classes: list[str],
              meta: dict[str, Any]) -> Path:
    """The head's weights and ``meta`` (encoders, kind, dim, max_steps and any more
    details) as one safetensors file, written atomically."""
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "classes": classes,
            "settings": dataclasses.asdict(trained.settings), **meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tensors = {k: v.detach().contiguous() for k, v in trained.model.state_dict().items()}
    save_file(tensors, str(tmp), metadata={"modrec": json.dumps(meta)})
    tmp.replace(path)
    return path


@dataclass
class SavedHead:
    model: SequenceHead
    meta: dict[str, Any]
    digest: str  # of the file: which head made a column

    @classmethod
    def load(cls, path: Path) -> SavedHead:
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        if not path.is_file():
            raise NotFoundError(f"no saved head at {path}; train one with `modrec classify "
                                "--single-label ... --save PATH`")
        try:
            with safe_open(str(path), "pt") as f:
                meta = json.loads((f.metadata() or {}).get("modrec", "{}"))
            tensors = load_file(str(path))
        except (SafetensorError, json.JSONDecodeError, OSError) as err:
            raise UsageError(f"{path} is not a readable head ({err}); save one again with "
                             "`modrec classify --single-label ... --save PATH`") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise UsageError(f"{path} is a safetensors file but not a modrec class head "
                             f"(no 'modrec' metadata of format {FORMAT!r})")
        try:
            settings = HeadSettings(**meta["settings"])
            model = SequenceHead(settings, meta["dim"], len(meta["classes"]),
                                 meta["max_steps"])
            model.load_state_dict(tensors)
        except (RuntimeError, TypeError, KeyError) as err:
            raise UsageError(f"{path}: the weights do not fit the head its metadata "
                             f"describes ({err})") from None
        model.eval()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        return cls(model, meta, digest)

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def encoders(self) -> list[str]:
        return [e["name"] for e in self.meta["encoders"]]

    def check_versions(self, store: EmbeddingStore) -> None:
        """Refuse a store whose vectors an encoder of another version made."""
        for encoder in self.meta["encoders"]:
            stored = store.info(encoder["name"]).version
            if stored != encoder["version"]:
                raise UsageError(
                    f"the head was trained on {encoder['name']} version "
                    f"{encoder['version']!r}, the store {store.folder} holds {stored!r}; "
                    f"embed with the same encoder settings, or train a head on these")

    @torch.no_grad()
    def probabilities(self, steps: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """(M, S, D) steps with (M,) lengths, each at least 1 -> (M, classes)."""
        if steps.shape[2] != self.meta["dim"]:
            raise UsageError(f"stored vectors have {steps.shape[2]} dimensions; the head "
                             f"reads {self.meta['dim']}")
        return self.model(torch.from_numpy(steps), torch.from_numpy(lengths)).softmax(-1).numpy()
