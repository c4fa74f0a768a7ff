"""Content understanding: encoders per modality, the embedding store that holds their
vectors (rows aligned with item indices), the extraction job, classification and
search. Imports data, never models or training."""

from modrec.content.encoder import EncodeError, Encoder
from modrec.content.extract import EmbedReport, build_encoder, embed
from modrec.content.store import EmbeddingStore

__all__ = ["EmbedReport", "EmbeddingStore", "EncodeError", "Encoder", "build_encoder", "embed"]
