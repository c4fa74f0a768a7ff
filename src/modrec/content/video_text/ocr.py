"""The text on a video's screen: Tesseract OCR of its sampled frames (the ``ocr`` column
of `modrec transcribe`), where Tesseract is installed; `ocr_unavailable` says why not
elsewhere, and the job skips the column.
"""

from __future__ import annotations

import re
from typing import Any

from modrec.errors import ConfigError, UnavailableError

OCR_INSTALL = "apt-get install tesseract-ocr && pip install pytesseract"


def ocr_unavailable() -> str | None:
    """Why OCR cannot run here (pytesseract or the tesseract program missing), or None."""
    try:
        import pytesseract
    except ImportError:
        return f"pytesseract is not installed ({OCR_INSTALL})"
    try:
        pytesseract.get_tesseract_version()
    except pytesseract.TesseractNotFoundError:
        return f"the tesseract program is not on PATH ({OCR_INSTALL})"
    return None


class ScreenText:
    """Words Tesseract reads in the frames with at least ``min_confidence`` (0-100),
    each at least two letters or digits long, in reading order, each distinct word
    once (a caption that stays on screen is read from every frame). Tesseract reads
    noise in pictures as short low-confidence "words"; the two filters keep them out."""

    def __init__(self, lang: str = "eng", min_confidence: float = 70.0) -> None:
        reason = ocr_unavailable()
        if reason:
            raise UnavailableError(f"OCR unavailable: {reason}")
        import pytesseract

        have = set(pytesseract.get_languages(config=""))
        wanted = lang.split("+")
        if missing := [code for code in wanted if code not in have]:
            raise ConfigError(f"tesseract has no language data for {', '.join(missing)} "
                             f"(installed: {', '.join(sorted(have))}); install it, e.g. "
                             f"apt-get install tesseract-ocr-{missing[0].replace('_', '-')}")
        self.lang, self.min_confidence = lang, min_confidence
        self.fingerprint = f"tesseract:{pytesseract.get_tesseract_version()}"
        self.version = f"lang={lang}:conf>={min_confidence}:words>=2"

    def read(self, frames: list[Any]) -> str:
        import pytesseract

        words: dict[str, None] = {}  # ordered set
        for frame in frames:
            data = pytesseract.image_to_data(frame.convert("RGB"), lang=self.lang,
                                             output_type=pytesseract.Output.DICT)
            for word, confidence in zip(data["text"], data["conf"], strict=True):
                word = word.strip()
                if float(confidence) >= self.min_confidence and \
                        len(re.findall(r"\w", word)) >= 2:
                    words.setdefault(word)
        return " ".join(words)
