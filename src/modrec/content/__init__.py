"""Content understanding: encoders per modality (`encoders/`, one `build_encoder`), the
embedding store that holds their vectors (rows aligned with item indices), the embed
job, item columns computed from content (`video_text/`, language-model labels),
classification and search; video networks in `video/`. Imports data and llm, and
`modrec.runs` lazily for the ``run:`` encoder only; never models or training."""

from modrec.content.embed_job import EmbedReport, embed
from modrec.content.encoders.base import EncodeError, Encoder
from modrec.content.encoders.registry import build_encoder
from modrec.content.store import EmbeddingStore

__all__ = ["EmbedReport", "EmbeddingStore", "EncodeError", "Encoder", "build_encoder", "embed"]
