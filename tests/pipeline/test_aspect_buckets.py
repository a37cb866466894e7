"""PixArt's aspect-ratio buckets for lumos-encode --buckets (issue 15 item 2, the encoder half): the nearest
bin by diffusers' own rule, resize to cover and center crop, on real photographs (scikit-image's)."""

import json

import numpy as np
import pytest
from diffusers.image_processor import PixArtImageProcessor
from PIL import Image

from lumos.curation.sample import photo
from lumos.floor.errors import UserError
from lumos.pipeline.encoders.aspect_buckets import _table, bins, bucket_of, fit_to_bucket


@pytest.mark.parametrize("resolution", [256, 512, 1024])
def test_the_bin_is_the_one_the_pipeline_bins_a_size_to(resolution):
    table = _table(resolution)
    assert len(bins(resolution)) == len(table) and [b[0] for b in bins(resolution)] == sorted(map(float, table))
    for width, height in [(640, 480), (480, 640), (1000, 250), (300, 1200), (512, 512), (451, 300), (123, 457)]:
        _, h, w = bins(resolution)[bucket_of(width, height, resolution)]
        assert (h, w) == PixArtImageProcessor.classify_height_width_bin(height, width, table), (width, height)
    assert bins(resolution)[bucket_of(512, 512, resolution)][0] == 1.0


def test_a_photograph_is_resized_to_cover_its_bin_and_center_cropped():
    image = photo("chelsea")  # a cat, 451 × 300 in scikit-image, scaled by the sample to short side 512
    bucket, fitted = fit_to_bucket(image, 256)
    ratio, h, w = bins(256)[bucket]
    assert fitted.size == (w, h) and abs(ratio - image.height / image.width) < 0.05
    scale = max(h / image.height, w / image.width)
    size = (round(image.width * scale), round(image.height * scale))
    expected = image.convert("RGB").resize(size, Image.BICUBIC)
    left, top = (size[0] - w) // 2, (size[1] - h) // 2
    assert np.array_equal(np.asarray(fitted), np.asarray(expected)[top:top + h, left:left + w])


def test_other_resolutions_are_refused_in_one_line():
    with pytest.raises(UserError, match="^--buckets pixart: PixArt has bins for 256, 512 and 1024 px, not 384$"):
        bins(384)


def test_bucketed_latents_are_the_vae_of_each_image_cut_to_its_bin(tmp_path, ray_session):
    """lumos-encode --buckets pixart stores, per row, the VAE posterior of the image resized and cropped to its
    bin (as fit_to_bucket), at that bin's shape, with the bin's id; rows of several bins in one batch."""
    import io

    import lance
    import torch

    import pyarrow as pa

    from lumos.curation.sample import encode, synthetic_image
    from lumos.pipeline.encode_job import EncoderConfig, run_encode
    from lumos.schemas import images as cols

    sizes = [(96, 80), (200, 100), (90, 180), (120, 120), (300, 100), (100, 240)]  # (width, height)
    rows = [{cols.ID: f"id{i}", cols.SOURCE: "test", cols.KEY: f"k{i}", cols.ORIGINAL_WIDTH: w, cols.ORIGINAL_HEIGHT: h,
             cols.WIDTH: w, cols.HEIGHT: h, cols.SHA256: f"s{i}", cols.CAPTION: f"c {i}",
             cols.IMAGE: encode(synthetic_image(w, h, seed=i))} for i, (w, h) in enumerate(sizes)]
    schema = cols.images_schema({"job": {"source": "test"}}, unique_ids=True)
    images = str(tmp_path / "images.lance")
    lance.write_dataset(pa.Table.from_pylist(rows, schema=schema), images, schema=schema)
    out = str(tmp_path / "f.lance")
    config = EncoderConfig("tiny-vae", buckets="pixart")
    run_encode(images, out, [config], batch_size=6, say=lambda *_: None)
    got = lance.dataset(out).to_table().to_pylist()
    source = {r[cols.ID]: r[cols.IMAGE] for r in rows}
    vae = config.build().load("cpu")
    shapes = json.loads(lance.dataset(out).schema.metadata[b"lumos.encoder.tiny-vae-256-pixart"])["bucket_shapes"]
    assert len({r["tiny_vae_256_pixart_bucket"] for r in got}) == len(sizes)  # six bins in one batch
    for row in got:
        with Image.open(io.BytesIO(source[row[cols.ID]])) as im:
            bucket, fitted = fit_to_bucket(im.convert("RGB"), 256)
        assert row["tiny_vae_256_pixart_bucket"] == bucket
        pixels = torch.from_numpy((np.asarray(fitted, np.float32) / 127.5 - 1.0).transpose(2, 0, 1))[None]
        want = vae.model.encode(pixels).latent_dist.mean.half().numpy()
        stored = np.asarray(row["tiny_vae_256_pixart_mean"], np.float16).reshape(1, *shapes[bucket])
        assert stored.shape == want.shape and np.abs(stored.astype(np.float32) - want).max() <= 1e-3
