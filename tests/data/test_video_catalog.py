"""The labelled-clips importers (`video-folder`, `video-csv`): odd names, broken clips
flagged with the reason, empty classes reported, CSV mistakes named by row."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from tests.support import write_video

from modrec.content.catalog import catalog_folder
from modrec.data import load_dataset
from modrec.data.dataset import DataFormatError
from modrec.data.formats import detect_format, import_path


def clip(path: Path, seconds: float = 0.6) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, seconds, audio=False)


def test_a_class_folder_tree_with_odd_names_imports_whole(tmp_path: Path) -> None:
    root = tmp_path / "my clips"
    clip(root / "fight club" / "round 1 (final).mp4")
    clip(root / "fight club" / "nested" / "ÉTÉ 夏.MOV")  # any depth, any case of suffix
    clip(root / "nö fight 🙂" / "calm.mkv")
    (root / "nö fight 🙂" / "notes.txt").write_text("not a clip")
    (root / "nö fight 🙂" / "._calm.mkv").write_bytes(b"macOS metadata, hidden")
    (root / ".thumbnails").mkdir()
    (root / "README.md").write_text("a file beside the classes is not a clip")

    assert detect_format(root) == "video-folder"
    dataset = load_dataset(root)
    items = dataset.items.set_index("item_id")
    assert sorted(items.index) == ["fight club/nested/ÉTÉ 夏.MOV",
                                   "fight club/round 1 (final).mp4", "nö fight 🙂/calm.mkv"]
    assert items.loc["fight club/nested/ÉTÉ 夏.MOV", "label"] == "fight club"
    assert items.loc["nö fight 🙂/calm.mkv", "label"] == "nö fight 🙂"
    assert items["problem"].isna().all()
    assert items.loc["nö fight 🙂/calm.mkv", "video"] == "nö fight 🙂/calm.mkv"
    assert catalog_folder(dataset) == root.resolve()  # where `modrec embed` reads them
    assert len(dataset.interactions) == 0 and dataset.num_users == 0
    assert dataset.provenance["video_catalog"]["classes"] == {"fight club": 2, "nö fight 🙂": 1}


def test_broken_clips_are_kept_and_flagged_with_the_reason(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    root = tmp_path / "clips"
    clip(root / "a" / "good.mp4")
    (root / "a" / "garbage.mp4").write_bytes(b"\x00not a video at all" * 50)
    (root / "b").mkdir()
    (root / "b" / "empty.avi").write_bytes(b"")
    clip(root / "b" / "fine.mp4")
    with caplog.at_level(logging.WARNING):
        dataset = import_path(root, "video-folder")
    problems = dataset.items.set_index("item_id")["problem"]
    assert problems[["a/good.mp4", "b/fine.mp4"]].isna().all()
    assert problems["a/garbage.mp4"] == "FFmpeg cannot read it: Invalid data found when " \
        "processing input"
    assert problems["b/empty.avi"].startswith("FFmpeg cannot read it: ")
    assert "a/garbage.mp4" in caplog.text and "b/empty.avi" in caplog.text
    assert dataset.provenance["video_catalog"]["unreadable"] == 2


def test_empty_class_folders_are_reported(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "clips"
    clip(root / "run" / "r.mp4")
    clip(root / "walk" / "w.mp4")
    (root / "swim").mkdir()
    (root / "jump").mkdir()
    (root / "jump" / "readme.txt").write_text("no clips yet")
    with caplog.at_level(logging.WARNING):
        dataset = import_path(root, "video-folder")
    assert "2 class folder(s) hold no video: 'jump', 'swim'" in caplog.text
    assert dataset.provenance["video_catalog"]["empty_classes"] == ["jump", "swim"]
    assert set(dataset.items["label"]) == {"run", "walk"}


def test_folders_without_clips_or_with_unclassed_ones_are_refused(tmp_path: Path) -> None:
    (tmp_path / "none" / "a").mkdir(parents=True)
    with pytest.raises(DataFormatError, match="no video files in its class folders"):
        import_path(tmp_path / "none", "video-folder")
    clip(tmp_path / "flat" / "a" / "x.mp4")
    clip(tmp_path / "flat" / "stray.mp4")
    with pytest.raises(DataFormatError, match=r"stray.mp4\) have no class; move each"):
        import_path(tmp_path / "flat", "video-folder")


def test_a_csv_resolves_relative_paths_at_its_own_folder(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    clip(tmp_path / "lists" / "media" / "one clip.mp4")
    elsewhere = clip(tmp_path / "elsewhere" / "two.mp4")
    (tmp_path / "lists" / "media" / "bad.mp4").write_bytes(b"truncated")
    csv = tmp_path / "lists" / "clips.csv"
    csv.write_text("Path,Label,Group\n"
                   "media/one clip.mp4,fight,v1\n"
                   f"{elsewhere},calm,v2\n"
                   '"media/bad.mp4",calm,v2\n')
    monkeypatch.chdir(tmp_path / "elsewhere")  # not the CSV's folder
    dataset = import_path(csv, "video-csv")
    items = dataset.items.set_index("item_id")
    assert items.loc["media/one clip.mp4", ["video", "label", "group"]].tolist() == [
        "media/one clip.mp4", "fight", "v1"]
    assert items.loc[str(elsewhere), "video"] == str(elsewhere)  # outside: absolute
    assert "FFmpeg cannot read it" in items.loc["media/bad.mp4", "problem"]
    assert catalog_folder(dataset) == csv.parent.resolve()

    tsv = tmp_path / "lists" / "clips.tsv"
    tsv.write_text("id\tpath\tlabel\nc1\tmedia/one clip.mp4\tfight\n"
                   "c2\tmedia/one clip.mp4\tcalm\n")  # one file twice, told apart by id
    assert import_path(tsv, "video-csv").items["item_id"].tolist() == ["c1", "c2"]


@pytest.mark.parametrize(("text", "message"), [
    ("path,label\nmedia/a.mp4,x\nmedia/missing.mp4,y\n",
     r"clips.csv:3: clip 'media/missing.mp4' does not exist .*delete the row"),
    ("path,label\nmedia,x\n", r"clips.csv:2: clip 'media' is a folder"),
    ("file name,class name\nmedia/a.mp4,x\n",
     r"no 'path' or 'label' column in the header \(columns: 'file name', 'class name'\)"),
    ("path,label,group\nmedia/a.mp4,x,g\nmedia/a.mp4,y,\n", r"clips.csv:3: empty 'group'"),
    ("path,label\nmedia/a.mp4,\n", r"clips.csv:2: empty 'label'"),
    ("path,label\nmedia/a.mp4,x\n./media/a.mp4,y\n",
     r"clips.csv:3: clip id 'media/a.mp4' is also on line 2"),
    ("path,label\n", r"no rows under the header"),
])
def test_csv_mistakes_name_the_row_and_the_fix(tmp_path: Path, text: str, message: str
                                               ) -> None:
    clip(tmp_path / "media" / "a.mp4")
    (tmp_path / "clips.csv").write_text(text)
    with pytest.raises(DataFormatError, match=message):
        import_path(tmp_path / "clips.csv", "video-csv")
