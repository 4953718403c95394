"""Item image embeddings: pooling per encoder family, image loading, errors naming files and items, the cache,
the feature source and the CLI. Every encoder is a tiny randomly initialised model saved to a temporary folder."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from genrec.features import NpyFeatures, load_features
from genrec.features import image as im
from genrec.features.__main__ import main
from tests.conftest import write_sequences_dataset

# Odd widths (37) catch shape bugs; 32-pixel images in 8-pixel patches keep every forward pass tiny.
TINY_VISION = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2,
               "image_size": 32, "patch_size": 8}
PROCESSOR_SIZE = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}


@pytest.fixture(scope="module")
def clip_encoder(tmp_path_factory) -> str:
    """CLIPVisionModelWithProjection: its embedding is the 16-wide projection, not the 32-wide pooled output."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    path = tmp_path_factory.mktemp("tiny-clip-vision")
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_VISION, projection_dim=16)).save_pretrained(path)
    CLIPImageProcessor(**PROCESSOR_SIZE).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def clip_dual_encoder(tmp_path_factory) -> str:
    """A whole CLIPModel (text tower too): its embedding comes from get_image_features."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    path = tmp_path_factory.mktemp("tiny-clip")
    torch.manual_seed(0)
    text = {"vocab_size": 99, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 16}
    CLIPModel(CLIPConfig(text_config=text, vision_config=TINY_VISION, projection_dim=16)).save_pretrained(path)
    CLIPImageProcessor(**PROCESSOR_SIZE).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def dino_encoder(tmp_path_factory) -> str:
    """Dinov2Model: no projection, its embedding is pooler_output (the layer-normed CLS token), 32 wide."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    path = tmp_path_factory.mktemp("tiny-dinov2")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(**TINY_VISION)).save_pretrained(path)
    BitImageProcessor(**PROCESSOR_SIZE).save_pretrained(path)
    return str(path)


def _gradient(width: int, height: int) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(255, 0, height, dtype=np.float32)[:, None, None]
    return np.broadcast_to(np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2), (height, width, 3))


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Images of different sizes, modes and formats; red and red_copy are the same picture in two files."""
    root = tmp_path_factory.mktemp("images")
    Image.new("RGB", (40, 30), (255, 0, 0)).save(root / "red.png")
    Image.new("RGB", (40, 30), (255, 0, 0)).save(root / "red_copy.png")
    Image.new("RGB", (64, 64), (0, 200, 0)).save(root / "green.png")
    Image.fromarray(_gradient(50, 70).astype(np.uint8)).save(root / "gradient.png")
    Image.fromarray(_gradient(33, 33)[:, ::-1].astype(np.uint8)).save(root / "photo.jpg", quality=95)
    Image.new("L", (20, 45), 90).save(root / "gray_l.png")
    Image.new("RGB", (20, 45), (90, 90, 90)).save(root / "gray_rgb.png")
    Image.new("RGBA", (36, 36), (0, 0, 255, 0)).save(root / "transparent.png")  # blue, but fully transparent
    Image.new("RGB", (36, 36), (255, 255, 255)).save(root / "white.png")
    return root


NAMES = ["red", "red_copy", "green", "gradient", "gray_l", "gray_rgb", "transparent", "white"]


def _paths(image_dir, names=NAMES):
    return [image_dir / f"{name}.png" for name in names]


@pytest.mark.parametrize(
    "encoder, dim", [("clip_encoder", 16), ("clip_dual_encoder", 16), ("dino_encoder", 32)]
)
def test_shape_and_pooling_per_encoder_family(encoder, dim, image_dir, request, caplog):
    paths = _paths(image_dir) + [image_dir / "photo.jpg"]
    with caplog.at_level(logging.INFO, logger="genrec.features.image"):
        vectors = im.image_embeddings(paths, encoder=request.getfixturevalue(encoder), progress=False)
    assert vectors.shape == (len(paths), dim) and vectors.dtype == torch.float32
    assert torch.isfinite(vectors).all() and (vectors.abs().sum(dim=1) > 0).all()
    how = {"clip_encoder": "image_embeds", "clip_dual_encoder": "get_image_features", "dino_encoder": "pooler_output"}
    assert how[encoder] in caplog.text


def test_matches_the_model_run_by_hand(clip_encoder, image_dir):
    """Oracle: the processor and the model's projected image_embeds, called directly on one image."""
    from transformers import AutoImageProcessor, CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection.from_pretrained(clip_encoder).eval()
    pixels = AutoImageProcessor.from_pretrained(clip_encoder)(images=[Image.open(image_dir / "gradient.png")],
                                                            return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model(pixel_values=pixels).image_embeds
    got = im.image_embeddings([image_dir / "gradient.png"], encoder=clip_encoder, progress=False)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_deterministic_row_order_and_batch_size_free(clip_encoder, image_dir):
    paths = _paths(image_dir)
    first = im.image_embeddings(paths, encoder=clip_encoder, batch_size=3, progress=False)
    assert torch.equal(first, im.image_embeddings(paths, encoder=clip_encoder, batch_size=3, progress=False))
    for batch_size in (1, 64):
        again = im.image_embeddings(paths, encoder=clip_encoder, batch_size=batch_size, progress=False)
        torch.testing.assert_close(again, first, rtol=1e-5, atol=1e-6)
    reversed_ = im.image_embeddings(paths[::-1], encoder=clip_encoder, batch_size=3, progress=False)
    torch.testing.assert_close(reversed_, first.flip(0), rtol=1e-5, atol=1e-6)


def test_same_picture_same_row_different_pictures_differ(clip_encoder, image_dir):
    v = dict(zip(NAMES, im.image_embeddings(_paths(image_dir), encoder=clip_encoder, progress=False)))
    torch.testing.assert_close(v["red"], v["red_copy"], rtol=1e-5, atol=1e-6)
    # Mode conversion: grey "L" equals the same grey in RGB; full transparency is composited onto white.
    torch.testing.assert_close(v["gray_l"], v["gray_rgb"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(v["transparent"], v["white"], rtol=1e-5, atol=1e-6)
    distinct = ["red", "green", "gradient", "gray_rgb", "white"]
    for i, a in enumerate(distinct):
        for b in distinct[i + 1 :]:
            assert not torch.allclose(v[a], v[b], atol=1e-4), (a, b)


def test_missing_image_names_file_and_item(clip_encoder, image_dir, caplog):
    paths = [image_dir / "red.png", image_dir / "nope.png", image_dir / "green.png", None]
    items = ["B001", "B002", "B003", "B004"]
    with pytest.raises(FileNotFoundError, match=r"2 of 4 items have no image file, item 'B002': .*nope\.png, "
                                                r"item 'B004': None; pass missing='zeros'"):
        im.image_embeddings(paths, encoder=clip_encoder, items=items, progress=False)
    with caplog.at_level(logging.WARNING, logger="genrec.features.image"):
        vectors = im.image_embeddings(paths, encoder=clip_encoder, items=items, missing="zeros", progress=False)
    assert "2 of 4 items have no image file; their embeddings are zero" in caplog.text and "nope.png" in caplog.text
    assert vectors.shape == (4, 16)
    assert (vectors[[1, 3]] == 0).all() and (vectors[[0, 2]] != 0).any(dim=1).all()
    present = im.image_embeddings([paths[0], paths[2]], encoder=clip_encoder, progress=False)
    torch.testing.assert_close(vectors[[0, 2]], present, rtol=1e-5, atol=1e-6)
    # With no image at all, "zeros" would hide a wrong folder or pattern: it is an error.
    with pytest.raises(FileNotFoundError, match="2 of 2 items have no image file"):
        im.image_embeddings(paths[1::2], encoder=clip_encoder, missing="zeros", progress=False)
    with pytest.raises(ValueError, match="missing must be one of"):
        im.image_embeddings(paths, encoder=clip_encoder, missing="skip", progress=False)  # type: ignore[arg-type]


def test_corrupted_and_truncated_images_name_file_and_item(clip_encoder, image_dir, tmp_path):
    corrupted = tmp_path / "broken.jpg"
    corrupted.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    for missing in ("error", "zeros"):  # an unreadable file is never treated as a missing one
        with pytest.raises(ValueError, match=r"1 of 2 image files cannot be read by PIL.*item 'B002': .*broken\.jpg"):
            im.image_embeddings([image_dir / "red.png", corrupted], encoder=clip_encoder, items=["B001", "B002"],
                                missing=missing, progress=False)  # type: ignore[arg-type]
    # A truncated JPEG passes the header check and fails while decoding; still named with its item.
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.jpg")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((tmp_path / "noise.jpg").read_bytes()[:-2000])
    with pytest.raises(ValueError, match=r"truncated\.jpg: cannot read the image of item 'B009'"):
        im.image_embeddings([truncated], encoder=clip_encoder, items=["B009"], progress=False)


@pytest.fixture
def image_dataset(tmp_path, image_dir):
    """A dataset over items 10, 20, 30, 40 whose images are ``<item_id>.png``; item 30's is the red copy."""
    path = write_sequences_dataset(tmp_path / "shop", ["1 10 20 30", "2 20 40", "3 40 10"])
    folder = tmp_path / "pictures"
    folder.mkdir()
    for item, name in [(10, "red"), (20, "gradient"), (30, "red_copy"), (40, "gray_l")]:
        (folder / f"{item}.png").write_bytes((image_dir / f"{name}.png").read_bytes())
    return path, folder


def test_feature_source_rows_in_item_order_and_cached(clip_encoder, image_dataset, tmp_path, monkeypatch):
    dataset, folder = image_dataset
    source = im.ImageEmbeddings(encoder=clip_encoder, image_dir=str(folder), pattern="{item_id}.png",
                                cache_dir=str(tmp_path / "cache"))
    vectors = source.load(dataset)
    expected = im.image_embeddings([folder / f"{i}.png" for i in (10, 20, 30, 40)], encoder=clip_encoder,
                                   progress=False)
    torch.testing.assert_close(vectors, expected, rtol=1e-5, atol=1e-6)
    assert len(list((tmp_path / "cache" / "image-embeddings").glob("*.npy"))) == 1
    fused = load_features(dataset, [source])
    torch.testing.assert_close(fused.norm(dim=1), torch.ones(4))  # l2 by default

    def fail(*args, **kwargs):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(im, "image_embeddings", fail)
    assert torch.equal(source.load(dataset), vectors)
    # A replaced image (new size and mtime) is a different cache entry, so it is re-encoded.
    Image.new("RGB", (10, 10), (1, 2, 3)).save(folder / "20.png")
    os.utime(folder / "20.png", ns=(1, 1))
    with pytest.raises(AssertionError, match="cache was not used"):
        source.load(dataset)


def test_feature_source_missing_and_validation(clip_encoder, image_dataset, tmp_path):
    dataset, folder = image_dataset
    (folder / "40.png").unlink()
    source = im.ImageEmbeddings(encoder=clip_encoder, image_dir=str(folder), pattern="{item_id}.png",
                                cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=r"1 of 4 items have no image file, item 40: .*40\.png"):
        source.load(dataset)
    source.missing = "zeros"
    vectors = source.load(dataset)
    assert (vectors[3] == 0).all() and (vectors[:3] != 0).any(dim=1).all()
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        im.ImageEmbeddings(encoder=clip_encoder, image_dir=str(tmp_path / "absent")).load(dataset)
    with pytest.raises(ValueError, match="missing must be one of"):
        im.ImageEmbeddings(encoder="e", image_dir="d", missing="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must contain"):
        im.ImageEmbeddings(encoder="e", image_dir="d", pattern="cover.jpg")
    with pytest.raises(ValueError, match="weight must be > 0"):
        im.ImageEmbeddings(encoder="e", image_dir="d", weight=0)


def test_cli_writes_npy_for_npy_features(clip_encoder, image_dataset, tmp_path, capsys):
    dataset, folder = image_dataset
    out = tmp_path / "features" / "images.npy"

    def args(pattern="{item_id}.png", output=out):
        return ["images", str(dataset), "--encoder", clip_encoder, "--image-dir", str(folder), "--pattern", pattern,
                "--cache-dir", str(tmp_path / "cache"), "--output", str(output)]

    argv = args()
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["items"] == 4 and report["dim"] == 16 and report["zero_rows"] == 0 and report["output"] == str(out)
    expected = im.ImageEmbeddings(encoder=clip_encoder, image_dir=str(folder), pattern="{item_id}.png",
                                  cache_dir=str(tmp_path / "cache")).load(dataset)
    assert torch.equal(NpyFeatures(path=str(out)).load(dataset), expected)
    assert main(args(output=tmp_path / "images.txt")) == 2
    assert "must end in .npy" in capsys.readouterr().err
    assert main(args(pattern="{item_id}.jpg")) == 2
    assert "4 of 4 items have no image file, item 10:" in capsys.readouterr().err


def test_tokenizer_config_accepts_image_source(clip_encoder, image_dataset, tmp_path):
    """An ImageEmbeddings source parses from YAML through train.py's CLI (nothing is loaded or fitted)."""
    from genrec.cli import main as train_main

    dataset, folder = image_dataset
    config = tmp_path / "tokenizer.yaml"
    config.write_text(json.dumps({
        "model": {"class_path": "genrec.tokenizer.lightning.RQKMeansTokenizer",
                  "init_args": {"output_dir": str(tmp_path / "tok"), "levels": 2, "codebook_size": 2}},
        "data": {"class_path": "genrec.tokenizer.datamodule.ItemFeatures",
                 "init_args": {"dataset": str(dataset), "batch_size": None, "sources": [
                     {"class_path": "genrec.features.image.ImageEmbeddings",
                      "init_args": {"encoder": clip_encoder, "image_dir": str(folder), "pattern": "{item_id}.png",
                                    "missing": "zeros", "weight": 0.5}}]}},
    }))  # JSON is YAML
    cli = train_main(["--config", str(config), "--trainer.default_root_dir", str(tmp_path)], run=False)
    (source,) = cli.datamodule.sources
    assert source == im.ImageEmbeddings(encoder=clip_encoder, image_dir=str(folder), pattern="{item_id}.png",
                                        missing="zeros", weight=0.5)


def test_image_codes_are_an_mscgrec_input_modality(clip_encoder, tmp_path):
    """Images -> ImageEmbeddings -> residual k-means artifact -> a third MSCGRec input modality, end to end."""
    from genrec.cli import main as cli_main
    from tests.conftest import N_ITEMS, cli_args, synthetic

    dataset, tokenizer = synthetic(tmp_path, users=40)
    folder = tmp_path / "walk-images"
    folder.mkdir()
    for i in range(N_ITEMS):  # item ids are 1..27 in the walk dataset; a colour per item
        Image.new("RGB", (24, 24), (9 * i, 255 - 9 * i, (37 * i) % 256)).save(folder / f"{i + 1}.png")
    source = {"class_path": "genrec.features.image.ImageEmbeddings",
              "init_args": {"encoder": clip_encoder, "image_dir": str(folder), "pattern": "{item_id}.png",
                            "cache_dir": str(tmp_path / "cache")}}
    image_ids = tmp_path / "walk-image-ids"
    cli_main(["fit", "--model=genrec.tokenizer.lightning.RQKMeansTokenizer", f"--model.output_dir={image_ids}",
              "--model.levels=2", "--model.codebook_size=4", "--data=genrec.tokenizer.datamodule.ItemFeatures",
              f"--data.dataset={dataset}", "--data.batch_size=null", f"--data.sources={json.dumps([source])}",
              "--trainer.max_epochs=1", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
              "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}"])
    cli = cli_main(["fit", *cli_args(dataset, tokenizer, tmp_path / "run",
                                     "--model.encoder=genrec.seq2seq.mscgrec.MultimodalHistory",
                                     "--model.constrained_softmax=true",
                                     f"--data.input_modalities={json.dumps([{'tokenizer': str(image_ids)}])}",
                                     "--trainer.max_steps=5", "--test_after_fit=true", "--examples=0")])
    assert len(cli.model.vocab.input_level_sizes) == 1 and cli.model.vocab.input_level_sizes[0][:2] == (4, 4)
    assert cli.trainer.callback_metrics["test/invalid"] == 0
