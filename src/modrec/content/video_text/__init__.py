"""What is said and shown in a catalog's videos, as item columns (`modrec transcribe`).

Per video, each a computed column (`modrec.content.columns`), one module per producer:

    transcript     the soundtrack through Whisper (`speech.py`)
    frame_labels   ImageNet labels of sampled frames, ``|``-separated like tags
                   (`frame_labels.py`), so ``tags:frame_labels`` encodes them
    ocr            the words on screen (Tesseract, `ocr.py`; skipped, with the reason
                   logged and reported, where it is not installed)
    video_text     the three as one text for language models and text encoders:
                   "TRANSCRIPT\\nShown: LABEL, LABEL.\\nOn screen: WORDS."

`describe_videos` (`describe.py`) is the resumable job that makes them; a producer's
model is loaded only when a video needs it.
"""

from modrec.content.video_text.describe import (
    COLUMNS,
    PARTS,
    PartReport,
    VideoTextSettings,
    compose_video_text,
    describe_videos,
)

__all__ = ["COLUMNS", "PARTS", "PartReport", "VideoTextSettings", "compose_video_text",
           "describe_videos"]
