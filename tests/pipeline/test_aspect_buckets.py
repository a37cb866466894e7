"""PixArt's aspect-ratio buckets for lumos-encode --buckets (issue 15 item 2, the encoder half): the nearest
bin by diffusers' own rule, resize to cover and center crop, on real photographs (scikit-image's)."""

import numpy as np
import pytest
from diffusers.image_processor import PixArtImageProcessor
from PIL import Image

from lumos.curation.sample import photo
from lumos.floor.errors import UserError
from lumos.pipeline.aspect_buckets import _table, bins, bucket_of, fit_to_bucket


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
