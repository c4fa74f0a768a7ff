"""``video:i3d``: a video as I3D sees it (`modrec.content.video.i3d`, Kinetics-400
weights): clips sampled by a `ClipPolicy`, each view (clip x crop) through the network.

    vector   (1024,)           the clip embeddings averaged over every view
    steps    (clips x T', 1024) one vector per 8 frames of each clip (crops averaged),
                               clips in time order: `EmbeddingStore.sequences`
    actions  column            the Kinetics-400 classes, class probabilities averaged
                               over the views (as I3D is evaluated), the ``top`` best

Spec: ``video:i3d`` or ``video:i3d:KEY=VALUE:...`` with the settings of `ClipPolicy`
(``frames``, ``stride`` or ``fps``, ``clips``, ``crop``); defaults
``frames=32:stride=2:clips=3:crop=center`` (the reasons: `modrec.content.video.sampling`).
The version names the weights' fingerprint and the policy, so another policy or other
weights encode afresh. Decoding the next video overlaps the network's pass over the
current one (a thread: FFmpeg decodes without the GIL).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modrec.content.columns import Producer
from modrec.content.encoders.base import Encoded, EncodeError, Spec
from modrec.content.video.i3d import DIM, I3D, MIN_FRAMES, kinetics400_weights, load_i3d
from modrec.content.video.sampling import ClipPolicy, Views, read_views
from modrec.data import Dataset
from modrec.fingerprints import weights_fingerprint

ACTIONS = "actions"  # the computed column of Kinetics-400 classes
TOP_ACTIONS = 5
VIEWS_PER_PASS = 8  # views through the network at once: bounds the activations' memory


@functools.cache
def kinetics400_names() -> tuple[str, ...]:
    """The 400 class names in the classifier's order (kinetics400.txt beside the network:
    DeepMind's Kinetics annotations, CC BY 4.0)."""
    text = (Path(__file__).parents[1] / "video" / "kinetics400.txt").read_text()
    names = tuple(line for line in text.splitlines() if line and not line.startswith("#"))
    if len(names) != 400:
        raise RuntimeError(f"kinetics400.txt holds {len(names)} names, not 400: reinstall "
                           "modrec")
    return names


class I3DEncoder:
    reads = "video"
    dim = DIM

    def __init__(self, policy: ClipPolicy | None = None, name: str = "video-i3d",
                 device: str = "cpu", weights: Path | None = None, top: int = TOP_ACTIONS,
                 model: I3D | None = None) -> None:
        self.name, self.device, self.top = name, device, top
        self.policy = policy or ClipPolicy()
        path = weights or kinetics400_weights()
        self.model = model if model is not None else load_i3d(path, device)
        self.fingerprint = f"i3d-k400:{weights_fingerprint(path)}"
        self.version = f"{self.fingerprint}:{self.policy.describe()}:mean-over-views"
        self.steps = self.policy.clips * math.ceil(self.policy.frames / 8)
        self.names = kinetics400_names()
        self.columns = [Producer(ACTIONS, self.fingerprint,
                                 f"{self.policy.describe()}:mean-prob-over-views:top{top}",
                                 "video")]

    def encode(self, batch: list[Any]) -> np.ndarray:
        return self.encode_all(batch).vectors

    def encode_all(self, batch: list[Any]) -> Encoded:
        """A broken or missing video is reported in ``errors`` (a zero row), not raised:
        the other videos' passes through the network are kept. Views of several videos
        go through the network together, ``VIEWS_PER_PASS`` at a time."""
        out = Encoded(np.zeros((len(batch), DIM), np.float32),
                      np.zeros((len(batch), self.steps, DIM), np.float32),
                      np.zeros(len(batch), np.int32), [{} for _ in batch], [None] * len(batch))
        waiting: list[tuple[int, Views]] = []
        for i, views in enumerate(self._decoded(batch)):
            if isinstance(views, EncodeError):
                assert out.errors is not None
                out.errors[i] = str(views)
                continue
            waiting.append((i, views))
            if sum(len(v.pixels) for _, v in waiting) >= VIEWS_PER_PASS:
                self._fill(out, waiting)
                waiting = []
        if waiting:
            self._fill(out, waiting)
        return out

    def _fill(self, out: Encoded, waiting: list[tuple[int, Views]]) -> None:
        results = self.encode_views([views for _, views in waiting])
        for (i, _), (vector, sequence, probabilities) in zip(waiting, results, strict=True):
            out.vectors[i], out.lengths[i] = vector, len(sequence)
            out.steps[i, :len(sequence)] = sequence
            out.columns[i] = {ACTIONS: self.actions(probabilities)}

    def _decoded(self, batch: list[Any]) -> Iterator[Views | EncodeError]:
        """Each item's views (or why it has none) in order, the next decoded while the
        caller runs the network on this one."""
        def read(value: Any) -> Views | EncodeError:
            path = Path(str(value))
            try:
                if not path.is_file():
                    raise EncodeError(f"video file not found: {path}")
                return read_views(path, self.policy)
            except EncodeError as err:
                return err

        with ThreadPoolExecutor(1, thread_name_prefix="i3d-decode") as pool:
            pending = pool.submit(read, batch[0]) if batch else None
            for i in range(len(batch)):
                assert pending is not None
                views = pending.result()
                pending = pool.submit(read, batch[i + 1]) if i + 1 < len(batch) else None
                yield views

    @torch.inference_mode()
    def encode_views(self, videos: list[Views]) -> list[tuple[np.ndarray, np.ndarray,
                                                               np.ndarray]]:
        """Videos' views -> per video (its 1024-d vector, its (clips x T', 1024) steps,
        its 400 class probabilities)."""
        pixels = np.concatenate([views.pixels for views in videos])
        maps = [self.model.feature_map(_clip_batch(pixels[i:i + VIEWS_PER_PASS], self.device))
                for i in range(0, len(pixels), VIEWS_PER_PASS)]
        features = torch.cat(maps)  # (V, 1024, T', 7, 7)
        embeddings = self.model.pool(features)  # (V, 1024)
        probabilities = self.model.head(embeddings).softmax(-1)
        per_step = features.mean(dim=(3, 4)).transpose(1, 2)  # (V, T', 1024)
        results = []
        start = 0
        for views in videos:
            at = slice(start, start + len(views.pixels))
            start = at.stop
            per_clip = per_step[at].reshape(views.clips, self.policy.crops,
                                            *per_step.shape[1:])
            sequence = per_clip.mean(1).reshape(-1, DIM)  # clips in time order
            results.append((embeddings[at].mean(0).float().cpu().numpy(),
                            sequence.float().cpu().numpy(),
                            probabilities[at].mean(0).float().cpu().numpy()))
        return results

    def actions(self, probabilities: np.ndarray) -> dict[str, Any]:
        """The ``top`` classes as the column's record fields."""
        best = np.argsort(-probabilities, kind="stable")[:self.top]
        return {"value": "|".join(self.names[i] for i in best),
                "scores": {self.names[i]: round(float(probabilities[i]), 4) for i in best}}


def _clip_batch(pixels: np.ndarray, device: str) -> torch.Tensor:
    """uint8 (V, T, 224, 224, 3) -> the network's (V, 3, T, 224, 224) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).to(device)
    return (x.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0).contiguous()


def build(spec: Spec, dataset: Dataset, device: str) -> I3DEncoder:
    """``video:i3d[:KEY=VALUE...]`` (the sampling settings of `ClipPolicy`)."""
    settings = spec.option.partition(":")[2]
    return I3DEncoder(ClipPolicy.parse(settings, MIN_FRAMES), name=spec.name, device=device)
