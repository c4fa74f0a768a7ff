"""CLIP-style image-text encoders, for users who bring weights: images (or item texts)
into the space a text tower maps queries to, so that search and zero-shot
classification work on pictures.

``clip:NAME_OR_PATH`` encodes the ``image`` column, ``clip-text:NAME_OR_PATH`` item text
(the ``text`` column, else the title). NAME_OR_PATH is anything transformers'
``AutoModel`` loads with ``get_image_features`` and ``get_text_features`` (CLIP, SigLIP,
and their relatives), with its tokenizer and image processor beside it: a local folder,
or a Hugging Face name downloaded where a network exists. No such weights ship with
modrec (none is installable here), so the default image encoder stays EfficientNet-Lite0.

Vectors are L2-normalised. The version names the model and a digest of its weights
(a folder's files, or the hub revision), and `ClipEncoder.matching` loads the same
model again to embed queries: `modrec search --encoder clip-...` and ``classify --mode
zero-shot`` then compare a query with the stored images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from modrec.content.encoders.base import EncodeError, Spec
from modrec.content.media import load_image
from modrec.data import Dataset
from modrec.errors import UsageError
from modrec.fingerprints import weights_fingerprint

PREFIX = "clip:"


class ClipEncoder:
    """One dual-encoder model; ``reads`` is ``image`` (its image tower) or ``text``."""

    def __init__(self, model: str, reads: str = "image", name: str = "clip",
                 device: str = "cpu", batch_size: int = 32) -> None:
        if reads not in ("image", "text"):
            raise UsageError(f"a CLIP encoder reads image or text, not {reads!r}")
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        path = Path(model).expanduser()
        source = str(path.resolve()) if path.exists() else model
        try:
            self._model = AutoModel.from_pretrained(source).to(device).eval()
            self._tokenizer = AutoTokenizer.from_pretrained(source)
            self._images = AutoImageProcessor.from_pretrained(source) if reads == "image" \
                else None
        except (OSError, ValueError) as err:
            raise UsageError(f"could not load a CLIP-style model from {model!r} ({err}); "
                             "name a folder holding its weights, tokenizer and image "
                             "processor, or a Hugging Face name where a network exists") \
                from None
        if not all(hasattr(self._model, f) for f in ("get_image_features",
                                                      "get_text_features")):
            raise UsageError(f"{model!r} is a {type(self._model).__name__}, not an image-text "
                             "dual encoder (no get_image_features / get_text_features)")
        self.name, self.reads, self.device, self.batch_size = name, reads, device, batch_size
        self.source = source
        self.dim = int(self._model.config.projection_dim)
        revision = (weights_fingerprint(path.resolve()) if path.exists()
                    else getattr(self._model.config, "_commit_hash", None) or "hub")
        self.version = f"{PREFIX}{source}|{revision}|{reads}:normalized"

    @classmethod
    def matching(cls, version: str) -> ClipEncoder:
        """The model whose stored vectors carry ``version``, loaded to embed queries
        (its text tower); refuses weights that changed since."""
        if not version.startswith(PREFIX):
            raise UsageError(f"vectors of version {version!r} were not made by a CLIP encoder")
        source, revision, _ = version[len(PREFIX):].rsplit("|", 2)
        encoder = cls(source, reads="text")
        if encoder.version.split("|")[1] != revision:
            raise UsageError(f"the CLIP weights at {source} changed since the stored vectors "
                             "were made; encode the items again (modrec embed)")
        return encoder

    @torch.no_grad()
    def encode(self, batch: list[Any]) -> np.ndarray:
        if self.reads == "text":
            return self.encode_text(batch)
        assert self._images is not None
        images = [load_image(x) for x in batch]
        out = []
        for start in range(0, len(images), self.batch_size):
            pixels = self._images(images=images[start:start + self.batch_size],
                                  return_tensors="pt")
            out.append(_features(self._model.get_image_features(
                pixel_values=pixels["pixel_values"].to(self.device))))
        return np.concatenate(out)

    @torch.no_grad()
    def encode_text(self, texts: list[Any]) -> np.ndarray:
        """Texts through the text tower, L2-normalised: ``(len(texts), dim)``."""
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise EncodeError(f"no text ({text!r})")
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self._tokenizer(texts[start:start + self.batch_size], padding=True,
                                     truncation=True, return_tensors="pt")
            tokens = {k: v.to(self.device) for k, v in tokens.items()
                      if k in ("input_ids", "attention_mask")}
            out.append(_features(self._model.get_text_features(**tokens)))
        return np.concatenate(out)


def _features(output: Any) -> np.ndarray:
    """The projected embeddings (a tensor, or transformers 5's output object holding
    them as ``pooler_output``), L2-normalised, as float32."""
    vectors = output if isinstance(output, torch.Tensor) else output.pooler_output
    vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)
    return vectors.cpu().numpy().astype(np.float32)


class QueryTower:
    """What embeds query texts beside stored CLIP vectors (`ClipEncoder.encode_text`)."""

    def __init__(self, encoder: ClipEncoder) -> None:
        self.encoder = encoder

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.encoder.encode_text(texts)


def build(spec: Spec, dataset: Dataset, device: str) -> ClipEncoder:
    """``clip:MODEL`` (the image tower, over the ``image`` column) or ``clip-text:MODEL``
    (the text tower, over item text)."""
    return ClipEncoder(spec.option, reads="image" if spec.modality == "clip" else "text",
                       name=spec.name, device=device)
