"""dino-b's transform (issue 16, acceptance 4): by default official Lumos' (short side to 224 bilinear, center
crop 224, ImageNet normalisation), compared pixel for pixel on a non-square photograph; the earlier one
(resize 256 bicubic) kept as `resize256`; features made with one are refused by a run asking for the other:
an encode into a table that holds them, and a training run started (--init) from a model trained on the other's
features (as a converted official run is)."""

import numpy as np
import pytest
import torch
from PIL import Image

from lumos.curation.sample import photo
from lumos.floor.errors import UserError
from lumos.pipeline.encode_job import EncoderConfig, run_encode
from lumos.trainer import checkpoint as ckpt
from lumos.trainer.train import TrainConfig, run_training

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _reference(image: Image.Image, short: int, resample) -> np.ndarray:
    """Resize the short side to `short`, center-crop 224, normalise: written out with PIL for the test."""
    w, h = image.size
    size = (round(w * short / h), short) if h < w else (short, round(h * short / w))
    resized = image.resize(size, resample)
    left, top = (size[0] - 224) // 2, (size[1] - 224) // 2
    crop = np.asarray(resized.crop((left, top, left + 224, top + 224)), np.float32) / 255.0
    return ((crop - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)


def test_dino_b_default_is_official_lumos_transform():
    image = photo("chelsea").convert("RGB")  # a cat, wider than high
    assert image.width != image.height
    official = EncoderConfig("dino-b", random_weights=True).build()
    assert np.array_equal(official.preprocess(image), _reference(image, 224, Image.Resampling.BILINEAR))
    old = EncoderConfig("dino-b", random_weights=True, preprocess="resize256").build()
    assert np.array_equal(old.preprocess(image), _reference(image, 256, Image.Resampling.BICUBIC))
    assert not np.allclose(official.preprocess(image), old.preprocess(image), atol=0.1)  # the two differ
    made = official.provenance()
    assert (made["preprocess"], made["crop"], made["resize"]) == ("official", "resize 224, center 224", "bilinear")
    # the earlier transform's record is the one tables made before the option hold: they stay comparable
    assert "preprocess" not in old.provenance() and old.provenance()["crop"] == "resize 256, center 224"
    with pytest.raises(UserError, match="--dino-preprocess square: expected one of official, resize256"):
        EncoderConfig("dino-b", preprocess="square").build()


def test_features_made_with_the_old_crop_are_refused_in_one_line(tmp_path, ray_session):
    from test_encode_resume import _images

    images = _images(str(tmp_path / "images.lance"), count=2, per_fragment=2)
    out = str(tmp_path / "f.lance")
    run_encode(images, out, [EncoderConfig("dino-b", random_weights=True, preprocess="resize256"),
                             EncoderConfig("tiny-vae")], batch_size=2, say=lambda *_: None)
    with pytest.raises(UserError) as refused:
        run_encode(images, out, [EncoderConfig("dino-b", random_weights=True)], say=lambda *_: None)
    message = str(refused.value)
    assert "\n" not in message and "already holds dino-b features made differently" in message
    assert "crop: 'resize 256, center 224' then, 'resize 224, center 224' now" in message

    # a model trained on official-crop features (here bf16 latents: the compute dtype is no reason to refuse)
    new = str(tmp_path / "new.lance")
    run_encode(images, new, [EncoderConfig("dino-b", random_weights=True), EncoderConfig("tiny-vae", precision="bf16")],
               batch_size=2, say=lambda *_: None)
    run = dict(mode="i2i", model="DiT-T/2", arch="lumos", latents="tiny-vae", condition="dino-b", precision="fp32",
               batch_size=2, steps=1, workers=0, warmup=1)
    run_training(TrainConfig.of(data=new, output=str(tmp_path / "official"), **run), say=lambda *_: None)
    with pytest.raises(UserError) as refused:  # fine-tuning it on the old crop's features
        run_training(TrainConfig.of(data=out, output=str(tmp_path / "tuned"), init=str(tmp_path / "official"), **run),
                     say=lambda *_: None)
    message = str(refused.value)
    assert "\n" not in message and "was trained on other dino-b features than --data" in message, message
    assert "crop: 'resize 224, center 224' then, 'resize 256, center 224' now" in message
    assert "compute_dtype" not in message

    # on features made its way, the I2I run starts from every one of its weights: another seed (a fresh model would
    # differ), lr 1e-30 (one step leaves the loaded weights, zeros moved by at most 1e-30)
    said = []
    run_training(TrainConfig.of(data=new, output=str(tmp_path / "tuned-ok"), init=str(tmp_path / "official"),
                                seed=1, **{**run, "lr": 1e-30, "weight_decay": 0.0}), say=said.append)
    assert not [line for line in said if line.startswith("--init: re-initialised")], said
    source = ckpt.read_weights(ckpt.latest(str(tmp_path / "official")), "ema")
    loaded = ckpt.read_weights(ckpt.latest(str(tmp_path / "tuned-ok")), "model")
    assert sorted(source) == sorted(loaded)
    assert all(torch.allclose(loaded[k], source[k], rtol=0, atol=1e-20) for k in loaded)
