"""Content encoders, one module per modality, and the registry that makes one from its
spec (``text``, ``image:timm:resnet50``, ``tags:tmdb_genres``...):

    base.py         the `Encoder` protocol, `EncodeError`, what a builder is given
    registry.py     `build_encoder` (exported by `modrec.content`) and its table
    text.py         sentence-transformers (bundled all-MiniLM-L6-v2), any text column
    image.py        EfficientNet-Lite0 (bundled ImageNet weights), or a timm backbone
    video.py        sampled frames through the image encoder + the soundtrack's audio
    audio.py        log-mel statistics (librosa)
    tags.py         multi-hot tags of any ``|``-separated column
    precomputed.py  vectors computed elsewhere: shipped matrices, a run's item vectors
    clip.py         a CLIP-style image-text model users bring

Files are decoded by `modrec.content.media`, below every encoder. This file imports the
base types only: modules outside the package (media, catalog) import
`modrec.content.encoders.base`, which runs this file first; importing the registry here
would import every encoder, and the tags encoder imports the catalog, from within the
catalog's own import.
"""

from modrec.content.encoders.base import Builder, EncodeError, Encoder, Spec

__all__ = ["Builder", "EncodeError", "Encoder", "Spec"]
