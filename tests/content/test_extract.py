"""The extraction job on real catalogs: videos and a user's own catalog of image paths
embed into the store, a missing file is flagged and the rest encoded."""

from __future__ import annotations

from modrec.content import EmbeddingStore, embed
from modrec.data import load_dataset


def test_microlens_videos_embed_into_the_store(tmp_path):
    ds = load_dataset("microlens-sample")
    assert ds.num_items == 3 and ds.num_users == 0
    store = EmbeddingStore.for_dataset(ds, tmp_path)
    # A fourth item whose file is missing: flagged and zero, the others encoded.
    ds.items = ds.items.copy()
    ds.items.loc[len(ds.items)] = {"item": 4, "item_id": "999", "video": str(tmp_path / "x.mp4"),
                                   "title": "missing", "text": "missing"}
    store = EmbeddingStore.for_dataset(ds, tmp_path)
    import modrec.content.embed_job as embed_job
    from modrec.content.encoders.video import VideoEncoder

    original = embed_job.build_encoder
    embed_job.build_encoder = lambda spec, d, device="cpu": VideoEncoder(frames=2)
    try:
        [report] = embed(ds, ["video"], store, progress=False)
    finally:
        embed_job.build_encoder = original
    assert (report.encoded, report.failures, report.failed_items) == (3, 1, ["999"])
    assert store.failed("video").tolist() == [False, False, False, False, True]


def test_own_catalog_with_media_paths_embeds(tmp_path, data_dir):
    """Bring your own data: a RecBole .inter/.item pair whose catalog names image files by
    path imports and embeds as is; the missing file is flagged, the rest encoded."""
    from modrec.content.media import sample_frames

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
