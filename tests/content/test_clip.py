"""The CLIP-style backend for users who bring weights, on a tiny randomly initialised
CLIPModel built and saved here (nothing is downloaded): its vectors are the model's
own normalised embeddings, `modrec embed --encoder clip:FOLDER` fills the store from
a catalog's images, and search embeds the query with the same model's text tower."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modrec.cli import main
from modrec.content import EmbeddingStore
from modrec.content.store import store_name

WORDS = ["[PAD]", "[UNK]", "a", "photo", "of", "red", "green", "blue", "square", "[EOS]"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    eos = WORDS.index("[EOS]")
    config = transformers.CLIPConfig(
        text_config={"vocab_size": len(WORDS), "hidden_size": 16, "intermediate_size": 32,
                     "num_hidden_layers": 1, "num_attention_heads": 2,
                     "max_position_embeddings": 16, "bos_token_id": 0, "pad_token_id": 0,
                     "eos_token_id": eos},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=8)
    folder = tmp_path_factory.mktemp("tiny-clip")
    transformers.CLIPModel(config).save_pretrained(folder)
    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=words, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]",
        model_max_length=16).save_pretrained(folder)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                    crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (48, 40), colour) for colour in ("red", "green", "blue")]


def test_vectors_are_the_models_own_normalised_embeddings(tiny_clip: Path) -> None:
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    from modrec.content.encoders.clip import ClipEncoder

    encoder = ClipEncoder(str(tiny_clip))
    images = encoder.encode(_images())
    texts = encoder.encode_text(["a red square", "a photo of blue"])
    assert images.shape == (3, 8) and texts.shape == (2, 8)
    assert images.dtype == np.float32
    assert np.allclose(np.linalg.norm(images, axis=1), 1, atol=1e-5)
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    tokens = AutoTokenizer.from_pretrained(tiny_clip)(["a red square", "a photo of blue"],
                                                      padding=True, return_tensors="pt")
    pixels = AutoImageProcessor.from_pretrained(tiny_clip)(images=_images(),
                                                           return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                    pixel_values=pixels["pixel_values"])
    assert np.allclose(images, out.image_embeds.numpy(), atol=1e-5)
    assert np.allclose(texts, out.text_embeds.numpy(), atol=1e-5)
    assert encoder.version.startswith(f"clip:{tiny_clip.resolve()}|")
    assert ClipEncoder.matching(encoder.version).encode_text(["a red square"]) == \
        pytest.approx(texts[:1], abs=1e-6)


def test_a_folder_without_a_dual_encoder_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason="transformers is not installed")
    from modrec.content.encoders.clip import ClipEncoder

    with pytest.raises(ValueError, match="could not load a CLIP-style model"):
        ClipEncoder(str(tmp_path))


def test_embed_and_search_images_through_the_cli(
        tiny_clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from modrec.content.encoders.clip import ClipEncoder

    catalog = tmp_path / "catalog"
    (catalog / "pictures").mkdir(parents=True)
    for image, name in zip(_images(), ("red", "green", "blue"), strict=True):
        image.save(catalog / "pictures" / f"{name}.png")
    (catalog / "shop.inter").write_text("user_id:token\titem_id:token\n" + "".join(
        f"u{u}\t{name}\n" for u in range(2) for name in ("red", "green", "blue")))
    (catalog / "shop.item").write_text("item_id:token\ttitle:token_seq\timage:token\n" + "".join(
        f"{name}\t{name} square\tpictures/{name}.png\n" for name in ("red", "green", "blue")))
    store = tmp_path / "store"
    spec = f"clip:{tiny_clip}"
    assert main(["embed", "-d", str(catalog / "shop.inter"), "--store", str(store),
                 "--encoder", f"{spec},clip-text:{tiny_clip}", "--no-progress",
                 "--json"]) == 0
    reports = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["encoders"]
    assert [(r["encoded"], r["failures"], r["dim"]) for r in reports] == [(3, 0, 8)] * 2
    assert main(["search", "-d", str(catalog / "shop.inter"), "--store", str(store),
                 "--encoder", store_name(spec), "a photo of red", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["items"]
    opened = EmbeddingStore(store, ["red", "green", "blue"])
    query = ClipEncoder(str(tiny_clip), reads="text").encode_text(["a photo of red"])[0]
    expected = np.asarray(opened.matrix(store_name(spec))[1:]) @ query  # cosine per item
    assert [h["item_id"] for h in hits] == [["red", "green", "blue"][i]
                                            for i in np.argsort(-expected)]
    assert [h["score"] for h in hits] == pytest.approx(sorted(expected, reverse=True), abs=1e-5)
