"""Content understanding on real data: the embedding store's guarantees, each encoder
on real inputs, classification, search, and content item towers on cold items."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modrec.content import EmbeddingStore, EncodeError, embed
from modrec.data import load_dataset


@pytest.fixture(scope="module")
def ml100k_store(ml100k, tmp_path_factory: pytest.TempPathFactory) -> EmbeddingStore:
    """ml-100k titles through MiniLM and genres as multi-hot, once for the module."""
    # Laid out as $MODREC_EMBEDDINGS_DIR/<dataset>, so training finds it by name.
    store = EmbeddingStore.for_dataset(ml100k, tmp_path_factory.mktemp("embeddings") / "ml-100k")
    embed(ml100k, ["text", "tags:genres"], store, progress=False)
    return store


# ---- the store ---------------------------------------------------------------------------
class FlakyEncoder:
    """Encodes text lengths; fails on chosen inputs, or stops the job after a count."""

    name, dim, version, reads = "flaky", 2, "1", "text"

    def __init__(self, bad: set[str] = frozenset(), stop_after: int | None = None) -> None:
        self.bad, self.stop_after, self.calls = bad, stop_after, 0

    def encode(self, batch: list) -> np.ndarray:
        self.calls += 1
        if self.stop_after is not None and self.calls > self.stop_after:
            raise KeyboardInterrupt  # an interruption, not an item's fault
        if any(x in self.bad for x in batch):
            raise EncodeError("bad input")
        return np.array([[len(x), 1.0] for x in batch], np.float32)


def test_store_is_incremental_resumable_and_flags_failures(ml100k, tmp_path, monkeypatch):
    import modrec.content.extract as extract

    titles = ml100k.items["title"].tolist()
    store = EmbeddingStore.for_dataset(ml100k, tmp_path)
    # 1. The job is interrupted after three batches: what was committed survives.
    monkeypatch.setattr(extract, "build_encoder", lambda *a, **k: FlakyEncoder(stop_after=3))
    with pytest.raises(KeyboardInterrupt):
        embed(ml100k, ["flaky"], store, batch_size=100, progress=False)
    reopened = EmbeddingStore.for_dataset(ml100k, tmp_path)
    assert reopened.done("flaky").sum() == 300
    assert len(reopened.missing("flaky")) == ml100k.num_items - 300
    # 2. Resume: only the missing items are encoded; one bad title is flagged, not fatal.
    bad = titles[500]
    monkeypatch.setattr(extract, "build_encoder", lambda *a, **k: FlakyEncoder({bad}))
    [report] = embed(ml100k, ["flaky"], reopened, batch_size=100, progress=False)
    assert (report.already, report.encoded, report.failures) == (300, ml100k.num_items - 301, 1)
    assert report.failed_items == [ml100k.items["item_id"].iloc[500]]
    matrix = reopened.matrix("flaky")
    assert matrix[501].tolist() == [0.0, 0.0] and reopened.failed("flaky")[501]
    assert matrix[1].tolist() == [len(titles[0]), 1.0]
    # 3. Nothing left to do.
    [again] = embed(ml100k, ["flaky"], reopened, progress=False)
    assert again.encoded == 0 and again.already == ml100k.num_items


def test_store_realigns_rows_by_item_id_when_the_catalog_changes(tmp_path):
    store = EmbeddingStore(tmp_path, ["a", "b", "c"])
    store.prepare("x", 1, "v1", "text")
    store.write("x", np.array([1, 2, 3]), np.array([[1.0], [2.0], [3.0]]))
    grown = EmbeddingStore(tmp_path, ["0", "a", "c", "d"])  # re-indexed, b gone, two new
    assert grown.matrix("x")[:, 0].tolist() == [0.0, 0.0, 1.0, 3.0, 0.0]
    assert grown.missing("x").tolist() == [1, 4]
    assert json.loads((tmp_path / "manifest.json").read_text())["encoders"]["x"]["ids"] \
        == grown.digest
    # A new encoder version starts afresh: old vectors are not comparable.
    grown.prepare("x", 1, "v2", "text")
    assert len(grown.missing("x")) == 4


def test_store_error_names_the_missing_encoder(ml100k, tmp_path):
    with pytest.raises(KeyError, match="modrec embed --encoder video"):
        EmbeddingStore.for_dataset(ml100k, tmp_path).matrix("video")


# ---- encoders on real inputs ---------------------------------------------------------------
def test_text_vectors_put_similar_titles_together(ml100k, ml100k_store):
    text = np.asarray(ml100k_store.matrix("text"))
    assert text.shape == (ml100k.num_items + 1, 384)
    assert np.allclose(np.linalg.norm(text[1:], axis=1), 1, atol=1e-3)
    index = {t: i + 1 for i, t in enumerate(ml100k.items["title"])}
    star_wars = text[index["Star Wars"]]
    assert star_wars @ text[index["Return of the Jedi"]] > star_wars @ text[index["Fargo"]]


def test_tags_are_multi_hot(ml100k, ml100k_store):
    tags = np.asarray(ml100k_store.matrix("tags-genres"))
    assert tags.shape[1] == 19  # the 19 ml-100k genres, unknown included
    assert tags[1].sum() == 3  # Toy Story: Animation, Children's, Comedy


def test_video_encoder_samples_frames_and_joins_audio(data_dir):
    from modrec.content.video import VideoEncoder, decode_audio, sample_frames

    video = data_dir / "microlens-sample" / "10040.mp4"
    frames = sample_frames(video, 3)
    assert len(frames) == 3 and frames[0].size == (1280, 720)
    waveform, rate = decode_audio(video)
    assert rate == 16_000 and len(waveform) > rate  # seconds of real sound
    encoder = VideoEncoder(frames=2)
    vector = encoder.encode([str(video)])[0]
    assert vector.shape == (2 * 1280 + 128,) and np.isfinite(vector).all()
    assert np.abs(vector[-128:]).sum() > 0  # the audio part is filled


def test_broken_and_missing_media_are_clear_errors(tmp_path, data_dir):
    from modrec.content.audio import AudioEncoder
    from modrec.content.video import VideoEncoder

    broken = tmp_path / "broken.mp4"
    broken.write_bytes((data_dir / "microlens-sample" / "10040.mp4").read_bytes()[:2000])
    encoder = VideoEncoder(frames=2)
    with pytest.raises(EncodeError, match="broken.mp4"):
        encoder.encode([str(broken)])
    with pytest.raises(EncodeError, match="not found"):
        encoder.encode([str(tmp_path / "nowhere.mp4")])
    with pytest.raises(EncodeError, match="not found"):
        AudioEncoder().encode([str(tmp_path / "nowhere.wav")])


def test_microlens_videos_embed_into_the_store(tmp_path):
    ds = load_dataset("microlens-sample")
    assert ds.num_items == 3 and ds.num_users == 0
    store = EmbeddingStore.for_dataset(ds, tmp_path)
    # A fourth item whose file is missing: flagged and zero, the others encoded.
    ds.items = ds.items.copy()
    ds.items.loc[len(ds.items)] = {"item": 4, "item_id": "999", "video": str(tmp_path / "x.mp4"),
                                   "title": "missing", "text": "missing"}
    store = EmbeddingStore.for_dataset(ds, tmp_path)
    import modrec.content.extract as extract
    from modrec.content.video import VideoEncoder

    original = extract.build_encoder
    extract.build_encoder = lambda spec, d, device="cpu": VideoEncoder(frames=2)
    try:
        [report] = embed(ds, ["video"], store, progress=False)
    finally:
        extract.build_encoder = original
    assert (report.encoded, report.failures, report.failed_items) == (3, 1, ["999"])
    assert store.failed("video").tolist() == [False, False, False, False, True]


def test_lastfm_precomputed_vectors_load_as_an_encoder(tmp_path):
    ds = load_dataset("lastfm-2k")
    store = EmbeddingStore.for_dataset(ds, tmp_path)
    reports = embed(ds, ["vggish", "whisper"], store, progress=False)
    assert [(r.dim, r.failures) for r in reports] == [(128, 0), (512, 0)]
    raw = np.load(Path(ds.provenance["source"]).parent / "lfm2k_vggish.npy")
    rows = {a: r for r, a in enumerate(
        np.loadtxt(Path(ds.provenance["source"]).parent / "lfm2k_npy_row_to_artistID.tsv",
                   skiprows=1, dtype=int)[:, 1])}
    first = int(ds.items["item_id"].iloc[0])
    assert np.allclose(store.matrix("vggish")[1], raw[rows[first]], atol=1e-5)


# ---- classification and search -------------------------------------------------------------
def test_classify_genres_from_titles_beats_the_majority_label(ml100k, ml100k_store):
    from modrec.content.classify import classify

    trained = classify(ml100k, "genres", ["text"], "trained", ml100k_store, head="linear",
                       min_count=20)
    knn = classify(ml100k, "genres", ["text"], "knn", ml100k_store, min_count=20)
    zero = classify(ml100k, "genres", ["text"], "zero-shot", ml100k_store, min_count=20,
                    template="a {label} movie")
    # Titles alone are thin evidence. References: always predicting Drama, the most
    # frequent genre, scores micro-F1 about 0.3; a random ranking's mAP is the mean
    # genre frequency.
    from modrec.content.classify import label_matrix

    chance = label_matrix(ml100k, "genres", min_count=20).targets.mean(0).mean()
    assert trained["micro_f1"] > 0.4 and trained["map"] > 2 * chance
    assert knn["map"] > 1.5 * chance and zero["map"] > 1.2 * chance
    with pytest.raises(ValueError, match="reads the label column"):
        classify(ml100k, "genres", ["tags:genres"], "trained", ml100k_store)  # spec form


def test_search_ranks_relevant_items_first(ml100k, ml100k_store):
    from modrec.content.search import TextSearch, search_map

    hits = TextSearch(ml100k, ml100k_store).search("star wars", k=5)
    assert any("Star Wars" in h["title"] for h in hits[:2])
    result = search_map(ml100k, "genres", "a {label} movie", ml100k_store)
    base_rate = np.mean([ml100k.items["genres"].str.contains(g, regex=False).mean()
                         for g in result["ap"]])
    assert result["map"] > 1.5 * base_rate  # better than a random ranking


# ---- content item towers on cold items --------------------------------------------------------
def test_content_tower_recommends_cold_items(ml100k_store, tmp_path, monkeypatch):
    """Withheld items: ID-only can only guess; ID+content ranks them from their titles."""
    from modrec.train import build_config, load_run, train

    monkeypatch.setenv("MODREC_EMBEDDINGS_DIR", str(ml100k_store.folder.parent))
    results = {}
    for tower in ("id", "id+content"):
        config = build_config("ml-100k", "sasrec", None, [
            "data.split=cold-items", f"model.item_tower={tower}", 'model.encoders=["text"]',
            "model.max_len=50", "train.epochs=15", "train.patience=15",
            "loss.num_negatives=64"])
        out = train(config, tmp_path / tower, progress=False)
        results[tower] = json.loads((out / "results.json").read_text())
    assert results["id"]["cold"]["users"] > 50 and results["id"]["warm"]["users"] > 800
    cold = {t: r["cold"]["hr@200"] for t, r in results.items()}
    chance = 200 / 1682
    assert cold["id"] < 2 * chance, cold  # a guess
    assert cold["id+content"] > 2 * max(cold["id"], chance), cold
    # The run folder alone restores the content tower (its matrix travels in model.pt).
    run = load_run(tmp_path / "id+content")
    assert run.model.item_tower.mode == "id+content"
    assert run.model.item_tower.content.abs().sum() > 0


def test_a_runs_learned_item_vectors_become_an_encoder(ml100k, tmp_path):
    import torch

    from modrec.train import build_config, train

    run = train(build_config("ml-100k", "sasrec", None, ["train.epochs=1", "model.max_len=20"]),
                tmp_path / "run", progress=False)
    store = EmbeddingStore.for_dataset(ml100k, tmp_path / "store")
    [report] = embed(ml100k, [f"run:{run}"], store, progress=False)
    assert report.dim == 50 and report.failures == 0
    weights = torch.load(run / "model.pt", weights_only=True)["item_tower.embedding.weight"]
    assert np.allclose(store.matrix(report.encoder), weights.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="trained on 'ml-100k', not 'lastfm-2k'"):
        embed(load_dataset("lastfm-2k"), [f"run:{run}"], EmbeddingStore(tmp_path / "x", ["1"]))


def test_image_and_audio_encoders_read_real_files(tmp_path, data_dir):
    """A real frame saved as PNG and the real soundtrack saved as WAV, through the
    image and audio encoders; unreadable files are clear errors."""
    import soundfile

    from modrec.content.audio import AudioEncoder
    from modrec.content.image import ImageEncoder
    from modrec.content.video import decode_audio, sample_frames

    video = data_dir / "microlens-sample" / "1002.mp4"
    frame = sample_frames(video, 1)[0]
    frame.save(tmp_path / "frame.png")
    image = ImageEncoder()
    from_file = image.encode([str(tmp_path / "frame.png")])
    assert from_file.shape == (1, 1280)
    assert np.allclose(from_file, image.encode([frame]), atol=1e-4)  # PNG is lossless
    waveform, rate = decode_audio(video)
    soundfile.write(tmp_path / "sound.wav", waveform, rate, subtype="FLOAT")
    sound = AudioEncoder().encode([str(tmp_path / "sound.wav"), str(video)])
    assert sound.shape == (2, 128) and np.allclose(sound[0], sound[1], atol=1e-3)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(EncodeError, match="bad.png"):
        image.encode([str(tmp_path / "bad.png")])


def test_own_catalog_with_media_paths_embeds(tmp_path, data_dir):
    """Bring your own data: a RecBole .inter/.item pair whose catalog names image files by
    path imports and embeds as is; the missing file is flagged, the rest encoded."""
    from modrec.content.video import sample_frames

    frames = sample_frames(data_dir / "microlens-sample" / "10034.mp4", 2)
    for i, frame in enumerate(frames, start=1):
        frame.save(tmp_path / f"poster{i}.png")
    (tmp_path / "shop.inter").write_text(
        "user_id:token\titem_id:token\n" + "".join(f"u{u}\ti{i}\n" for u in range(3)
                                                   for i in (1, 2, 3)))
    (tmp_path / "shop.item").write_text(
        "item_id:token\ttitle:token_seq\timage:token\n"
        f"i1\tred shoes\t{tmp_path / 'poster1.png'}\n"
        f"i2\tblue hat\t{tmp_path / 'poster2.png'}\n"
        f"i3\tgreen scarf\t{tmp_path / 'missing.png'}\n")
    ds = load_dataset(tmp_path / "shop.inter")
    store = EmbeddingStore.for_dataset(ds, tmp_path / "store")
    text, image = embed(ds, ["text", "image"], store, progress=False)
    assert (text.encoded, text.failures) == (3, 0)  # titles stand in for text
    assert (image.encoded, image.failures, image.failed_items) == (2, 1, ["i3"])
