"""``video:i3d`` (issue 36, items 2 and 5): the clip sampling policy decodes exactly the
frames it asks for, the encoder through ``modrec embed`` equals I3D applied directly,
its step sequences are stored and read back with their lengths, broken clips are
flagged per item, and the ``actions`` column names real Kinetics clips' classes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from modrec.cli import main
from modrec.content import EmbeddingStore
from modrec.content.encoders.base import EncodeError
from modrec.content.media import frames_at, probe_video
from modrec.content.store import StoreError
from modrec.content.video.i3d import clip_tensor, load_i3d
from modrec.content.video.sampling import ClipPolicy, read_views
from modrec.errors import UsageError
from support import free_port

BITS = 6  # a frame's number in six horizontal stripes, 8 rows each: up to 63


def numbered_video(path: Path, count: int, rate: int = 10, gop: int = 8,
                   noise: int | None = None) -> Path:
    """``count`` frames of 64 x 48, frame i spelling i in binary as black and white
    stripes, most significant on top (``noise``: random pixels from that seed instead);
    a keyframe every ``gop`` frames. The suffix picks the container."""
    import av

    rng = np.random.default_rng(noise)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.gop_size = gop
        stream.codec_context.options = {"qscale": "1", "sc_threshold": "1000000000"}
        for i in range(count):
            if noise is not None:
                pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            else:
                bits = [(i >> (BITS - 1 - k)) & 1 for k in range(BITS)]
                pixels = np.repeat(np.array(bits, np.uint8) * 255, 8)[:, None, None]
                pixels = np.broadcast_to(pixels, (48, 64, 3)).copy()
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def levels(frames: np.ndarray | list[np.ndarray]) -> list[int]:
    """Each frame's number (`numbered_video`), read at the stripes' middle rows: of the
    frame as stored, or of a 224-row crop of it scaled to 256 rows."""
    out = []
    for frame in frames:
        height = frame.shape[0]
        scale, top = (256 / 48, 16) if height == 224 else (height / 48, 0)
        rows = [round((8 * k + 4) * scale) - top for k in range(BITS)]
        out.append(sum(int(frame[y].mean() > 128) << (BITS - 1 - k)
                       for k, y in enumerate(rows)))
    return out


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return numbered_video(tmp_path_factory.mktemp("media") / "numbered.mp4", 60)


# ---- sampling ----

@pytest.mark.parametrize("seek_ahead", [0.0, 1.0, None])  # seek each, near ones, never
def test_the_decoder_returns_exactly_the_frames_asked_for(long_video: Path,
                                                          seek_ahead: float | None) -> None:
    wanted = [37, 3, 4, 59, 20, 3, 0]  # any order, repeats allowed
    frames = frames_at(long_video, wanted, seek_ahead=seek_ahead)
    assert levels(frames) == wanted
    assert frames[0].shape == (48, 64, 3)
    assert frames_at(long_video, [5], short_side=256)[0].shape == (256, 341, 3)


def test_clips_are_evenly_spaced_windows_at_the_stride(long_video: Path) -> None:
    info = probe_video(long_video)
    assert (info.frames, info.rate) == (60, 10)
    policy = ClipPolicy(frames=10, stride=2, clips=3, crop="three")
    views = read_views(long_video, policy)
    # windows spanning 19 frames centred on frames 10, 30 and 50 (the thirds' middles)
    assert [w.tolist()[:3] for w in views.indices] == [[1, 3, 5], [21, 23, 25], [41, 43, 45]]
    assert views.pixels.shape == (9, 10, 224, 224, 3)  # 3 clips x 3 crops
    for view, clip in zip(views.pixels, np.repeat(np.arange(3), 3), strict=True):
        assert levels(view) == views.indices[clip].tolist()
    # fps instead of a stride: 5 frames a second of a 10 fps video is every other frame
    by_rate = ClipPolicy(frames=10, fps=5.0, clips=3).windows(info)
    assert [w.tolist() for w in by_rate] == [w.tolist() for w in views.indices]


def test_short_videos_get_fewer_clips_and_a_too_short_one_is_looped(long_video: Path,
                                                                     tmp_path: Path) -> None:
    info = probe_video(long_video)
    assert len(ClipPolicy(frames=32, stride=1, clips=3).windows(info)) == 1  # 60 < 2 x 32
    short = numbered_video(tmp_path / "short.mp4", 12)
    views = read_views(short, ClipPolicy(frames=16, stride=1, clips=2))
    assert views.clips == 1
    assert levels(views.pixels[0]) == list(range(12)) + [0, 1, 2, 3]


def test_clip_settings_are_read_and_bad_ones_named() -> None:
    policy = ClipPolicy.parse("clips=1:frames=16:crop=three")
    assert (policy.frames, policy.stride, policy.clips, policy.crop) == (16, 2, 1, "three")
    assert ClipPolicy.parse("") == ClipPolicy()
    assert ClipPolicy().describe() == "frames32:stride2:clips3:crop-center"
    for text, message in [("frame=16", "unknown clip setting 'frame=16'"),
                          ("frames=many", "frames='many' is not a number"),
                          ("stride=2:fps=5", "either stride"),
                          ("crop=left", "unknown crop 'left'"),
                          ("clips=0", "at least 1"),
                          ("frames=4", "frames=4 is too few")]:
        with pytest.raises(UsageError, match=message):
            ClipPolicy.parse(text, minimum_frames=9)


def test_a_truncated_stream_is_an_encode_error_naming_the_file(tmp_path: Path) -> None:
    whole = numbered_video(tmp_path / "whole.mkv", 60)  # Matroska: opens when cut short
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[:len(data) // 3])
    with pytest.raises(EncodeError, match=r"cut\.mkv ends at frame \d+ of the 60 .*truncated"):
        frames_at(cut, [5, 55])


# ---- the store's sequences ----

def test_sequences_are_stored_realigned_and_validated(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, ["a", "b", "c"])
    store.prepare("seq", 4, "v1", "video", steps=3)
    steps = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    store.write_rows("seq", np.array([1, 3]), np.ones((2, 4), np.float32))
    store.write_steps("seq", np.array([1, 3]), steps, np.array([3, 1]))
    store.mark("seq", np.array([1, 3]))
    got, lengths = store.sequences("seq")
    assert got.shape == (4, 3, 4) and got.dtype == np.float16
    assert lengths.tolist() == [0, 3, 0, 1]
    assert np.array_equal(got[3], steps[1])
    assert store.validate()["seq"]["done"] == 2
    grown = EmbeddingStore(tmp_path, ["c", "new", "a"])  # re-indexed: kept by id
    got, lengths = grown.sequences("seq")
    assert lengths.tolist() == [0, 1, 0, 3]
    assert np.array_equal(got[1], steps[1]) and np.array_equal(got[3], steps[0])
    np.save(tmp_path / f"seq.{grown.digest}.lengths.npy", np.array([0, 9, 0, 3], np.int32))
    with pytest.raises(StoreError, match="step lengths outside 1..3"):
        grown.validate()
    with pytest.raises(Exception, match="stores no step sequences"):
        grown.prepare("flat", 2, "v1", "text")
        grown.sequences("flat")


# ---- the encoder through `modrec embed` ----

SPEC = "video:i3d:frames=9:stride=1:clips=2"  # the fewest frames I3D takes: fast


def _catalog(folder: Path) -> Path:
    media = folder / "media"
    media.mkdir(parents=True)
    numbered_video(media / "a.mp4", 24, noise=0)
    numbered_video(media / "b.mp4", 12, noise=1)  # one clip only: 12 < 2 x 9
    data = numbered_video(media / "c.mkv", 60, noise=2).read_bytes()
    (media / "broken.mkv").write_bytes(data[:len(data) // 3])
    (folder / "shop.inter").write_text("user_id:token\titem_id:token\n" + "".join(
        f"u{u}\ti{i}\n" for u in range(3) for i in (1, 2, 3)))
    (folder / "shop.item").write_text(
        "item_id:token\ttitle:token_seq\tvideo:token\n"
        "i1\ta\tmedia/a.mp4\ni2\tb\tmedia/b.mp4\ni3\tbroken\tmedia/broken.mkv\n")
    return folder / "shop.inter"


@pytest.mark.slow
def test_embed_equals_i3d_applied_directly_and_flags_the_broken_clip(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    catalog = _catalog(tmp_path / "catalog")
    store_folder = tmp_path / "store"
    args = ["embed", "-d", str(catalog), "--encoder", SPEC, "--store", str(store_folder),
            "--no-progress", "--json"]
    assert main(args) == 0
    [report] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["encoders"]
    assert (report["encoded"], report["failures"], report["failed_items"]) == (2, 1, ["i3"])
    store = EmbeddingStore(store_folder, ["i1", "i2", "i3"])
    assert store.validate()[report["encoder"]] == {"rows": 3, "done": 3, "failed": 1,
                                                   "pending": 0}
    assert store.info(SPEC).version.startswith("i3d-k400:")
    assert "frames9:stride1:clips2:crop-center" in store.info(SPEC).version

    model = load_i3d()
    policy = ClipPolicy.parse(SPEC.split(":", 2)[2])
    steps, lengths = store.sequences(SPEC)
    assert steps.shape == (4, 4, 1024) and lengths.tolist() == [0, 4, 2, 0]  # 2 steps a clip
    for row, name in ((1, "a.mp4"), (2, "b.mp4")):
        views = read_views(tmp_path / "catalog" / "media" / name, policy)
        x = torch.stack([clip_tensor(list(view)) for view in views.pixels])
        with torch.no_grad():
            expected = model.embed(x).mean(0).numpy()
            expected_steps = model.step_features(x).reshape(-1, 1024).numpy()
        np.testing.assert_allclose(store.matrix(SPEC)[row], expected, rtol=0, atol=1e-5)
        np.testing.assert_allclose(steps[row, :lengths[row]].astype(np.float32),
                                   expected_steps, rtol=2e-3, atol=2e-3)  # float16
    assert not np.any(steps[3]) and not np.any(store.matrix(SPEC)[3])

    records = {r["key"]: r for r in map(json.loads, next(
        (store_folder / "columns").glob("actions-*.jsonl")).read_text().splitlines())}
    assert len(records["i1"]["value"].split("|")) == 5 and records["i1"]["error"] is None
    assert "truncated or damaged" in records["i3"]["error"] and records["i3"]["value"] is None
    # A rerun encodes nothing: the failure is remembered, every column record is there.
    assert main(args) == 0
    [again] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["encoders"]
    assert (again["encoded"], again["already_stored"]) == (0, 3)


# ---- real Kinetics-400 clips ----

def test_the_shipped_class_names_are_kinetics_400_s_in_index_order(data_dir: Path) -> None:
    from modrec.content.encoders.i3d import kinetics400_names

    label_map = data_dir / "kinetics-tiny" / "label_map_k400.txt"
    assert list(kinetics400_names()) == label_map.read_text().splitlines()


LABELLED = [("mmaction2/demo.mp4", "arm wrestling"),
            ("decord/flipping_a_pancake.mkv", "flipping pancake")]


@pytest.mark.slow
def test_the_actions_column_names_real_kinetics_clips_classes(
        data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = data_dir / "kinetics-tiny" / "k400"
    for clip, _ in LABELLED:
        assert (folder / clip).exists(), f"{folder / clip} not found"
    (tmp_path / "k.inter").write_text("user_id:token\titem_id:token\nu1\tk1\nu1\tk2\n")
    (tmp_path / "k.item").write_text("item_id:token\tvideo:token\n" + "".join(
        f"k{i}\t{folder / clip}\n" for i, (clip, _) in enumerate(LABELLED, start=1)))
    assert main(["embed", "-d", str(tmp_path / "k.inter"), "--encoder",
                 "video:i3d:frames=16:stride=1:clips=1", "--store", str(tmp_path / "store"),
                 "--allow-outside-paths", "--no-progress", "--json"]) == 0
    capsys.readouterr()
    manifest = json.loads((tmp_path / "store" / "columns" / "manifest.json").read_text())
    entry = manifest["columns"]["actions"]
    assert entry["model"].startswith("i3d-k400:") and entry["items"] == 2
    records = {r["key"]: r for r in map(json.loads, (tmp_path / "store" / "columns" /
                                                      entry["file"]).read_text().splitlines())}
    for i, (clip, name) in enumerate(LABELLED, start=1):
        assert name in records[f"k{i}"]["value"].split("|"), (clip, records[f"k{i}"])


def test_a_bad_clip_setting_is_one_message_and_exit_2(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    catalog = _catalog(tmp_path / "catalog")
    assert main(["embed", "-d", str(catalog), "--encoder", "video:i3d:frame=16",
                 "--store", str(tmp_path / "store"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown clip setting 'frame=16'; write KEY=VALUE with KEY one of frames" in err


def test_actions_asked_of_transcribe_point_to_the_embed_job(tmp_path: Path) -> None:
    from modrec.content.video_text import VideoTextSettings, describe_videos
    from modrec.data import load_dataset

    dataset = load_dataset(str(_catalog(tmp_path / "catalog")))
    with pytest.raises(UsageError, match="unknown part actions.*modrec embed --encoder "
                                         "video:i3d"):
        describe_videos(dataset, VideoTextSettings(parts=("actions",)))


def _rank(rank: int, port: int, catalog: Path, store: Path, env: dict[str, str]) -> None:
    os.environ.update({**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"})
    torch.set_num_threads(1)  # two processes on a 2-core machine
    try:
        assert main(["embed", "-d", str(catalog), "--encoder", SPEC, "--store", str(store),
                     "--batch-size", "1", "--no-progress", "--json"]) == 0
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_store_sequences_and_rank_0_writes_every_action(tmp_path: Path) -> None:
    """Batches of one video: rank 0 encodes i1 and i3, rank 1 i2; rank 0 alone appends
    the column's records, every rank's among them, and commits its manifest."""
    import torch.multiprocessing as mp

    catalog, store_folder = _catalog(tmp_path / "catalog"), tmp_path / "store"
    env = {"OMP_NUM_THREADS": "1", "MODREC_CACHE_DIR": os.environ["MODREC_CACHE_DIR"]}
    mp.start_processes(_rank, args=(free_port(), catalog, store_folder, env), nprocs=2,
                       start_method="spawn")
    store = EmbeddingStore(store_folder, ["i1", "i2", "i3"])
    assert store.validate()[store.info(SPEC).name]["failed"] == 1
    assert store.sequences(SPEC)[1].tolist() == [0, 4, 2, 0]
    manifest = json.loads((store_folder / "columns" / "manifest.json").read_text())
    lines = (store_folder / "columns" / manifest["columns"]["actions"]["file"]).read_text()
    records = [json.loads(line) for line in lines.splitlines()]
    assert sorted(r["key"] for r in records) == ["i1", "i2", "i3"]  # once each
    assert manifest["columns"]["actions"]["items"] == 3
