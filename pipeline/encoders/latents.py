"""What the latent encoders (the SD VAEs, `pixels`) share: the image cut to `--resolution`, either as its center
square (one latent shape for the table) or, with `--buckets pixart`, to the nearest of PixArt's aspect-ratio
bins for that resolution (pipeline/encoders/aspect_buckets.py), one latent shape per bin.

Bucketed latents are stored per row at their bin's shape (`large_list<halffloat>`, (C, -1, -1) in the field)
with the bin's index in `{name}_bucket`; the provenance record lists every bin's latent shape
(`bucket_shapes`), so a reader knows each row's shape from its bucket alone. A batch is encoded bin by bin
(one forward per shape present). The features go by `latents_name` (schemas/features.py): the encoder's
name, with the resolution and the bucketing unless they are 256 px center squares.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from lumos.pipeline.encoders import aspect_buckets
from lumos.pipeline.encoders.base import ImageEncoder, square_pixels
from lumos.schemas import features


@dataclass
class LatentEncoder(ImageEncoder):
    resolution: int = 256
    buckets: str = "none"  # none | pixart

    channels = 4  # latent channels
    downsample = 8  # pixels per latent cell

    @property
    def input_size(self) -> int:
        return self.resolution

    @property
    def bucketed(self) -> bool:
        return self.buckets != "none"

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        return self.channels, height // self.downsample, width // self.downsample

    def bucket_shapes(self) -> list[tuple[int, int, int]]:
        """Every bin's latent shape, by bucket id."""
        return [self.latent_shape(h, w) for _, h, w in aspect_buckets.bins(self.resolution)]

    def payload_fields(self) -> list[pa.Field]:
        mean, std = features.mean_column(self.name), features.std_column(self.name)
        if self.bucketed:
            return [features.varying_tensor_field(mean, self.channels),
                    features.varying_tensor_field(std, self.channels)]
        shape = self.latent_shape(self.resolution, self.resolution)
        return [features.tensor_field(mean, shape), features.tensor_field(std, shape)]

    def fields(self) -> list[pa.Field]:
        extra = [features.bucket_field(features.bucket_column(self.name))] if self.bucketed else []
        return [*super().fields(), *extra]

    def to_pixels(self, image: Image.Image) -> np.ndarray:
        """One RGB image → float32 (3, h, w) in [-1, 1]: the center square at --resolution, or its bucket's cut."""
        if not self.bucketed:
            return square_pixels(image, self.resolution)
        _, fitted = aspect_buckets.fit_to_bucket(image, self.resolution)
        return (np.asarray(fitted, np.float32) / 127.5 - 1.0).transpose(2, 0, 1)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.to_pixels(image)

    def bucket_in_flight(self) -> str:
        return features.pixels_column(self.name) + "_bucket"

    def in_flight(self):
        return [features.pixels_column(self.name), self.bucket_in_flight()] if self.bucketed else \
            features.pixels_column(self.name)

    def prepared(self, images: list[Image.Image | None]) -> dict[str, pa.Array]:
        if not self.bucketed:
            return super().prepared(images)
        buckets = [None if im is None else aspect_buckets.bucket_of(im.width, im.height, self.resolution)
                   for im in images]
        return {features.pixels_column(self.name): self.pixels(images), self.bucket_in_flight(): pa.array(buckets, pa.int16())}

    def encode(self, batch: pa.Table) -> dict[str, pa.Array]:
        if not self.bucketed:
            return super().encode(batch)
        import torch

        column = batch[features.pixels_column(self.name)].combine_chunks()
        ok = pc.is_valid(column).to_numpy(zero_copy_only=False)
        buckets = batch[self.bucket_in_flight()].to_numpy(zero_copy_only=False)
        shapes = self.bucket_shapes()
        rows: list[dict | None] = [None] * len(ok)
        for bucket in sorted({int(b) for b, good in zip(buckets, ok) if good}):
            where = np.flatnonzero(ok & (buckets == bucket))
            _, h, w = aspect_buckets.bins(self.resolution)[bucket]
            flat = column.take(pa.array(where)).flatten().to_numpy()
            pixels = torch.from_numpy(flat.reshape(-1, 3, h, w).copy())  # Arrow buffers are read-only
            with torch.inference_mode(), self.autocast():
                out = self.forward(pixels.to(self.device))
            size = int(np.prod(shapes[bucket]))
            for k, i in enumerate(where):
                rows[i] = {name: values[k].reshape(size) for name, values in out.items()}
        out = {}
        for f in self.payload_fields():
            values = [np.zeros(0, np.float16) if r is None else r[f.name] for r in rows]
            offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int64)
            flat = np.concatenate(values) if values else np.zeros(0, np.float16)
            out[f.name] = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.float16()),
                                                        mask=pa.array(~ok))
        out[features.bucket_column(self.name)] = pa.array(np.where(ok, buckets, 0).astype(np.int16), pa.int16(),
                                                          mask=~ok)
        out[features.ok_column(self.name)] = pa.array(ok, pa.bool_())
        return out

    def cut(self) -> dict:
        """Provenance: how images were cut (bucketed records add the bins' latent shapes)."""
        if not self.bucketed:
            return {"crop": "center square"}
        return {"crop": "pixart aspect-ratio bins (resize to cover, center crop)", "buckets": self.buckets,
                "bucket_shapes": [list(s) for s in self.bucket_shapes()]}
