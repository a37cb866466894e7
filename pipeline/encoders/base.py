"""What every frozen encoder provides to the encode job, and what image encoders share.

An encoder turns a batch of images-table rows into feature columns in two steps: `prepare` on CPU (resize
and normalise decoded images, tokenize captions) into in-flight columns, and `encode` where the model lives
(an actor, a GPU when present), from those columns to its feature columns. The encode job decodes each
image once for all image encoders (`decode_images`, then each encoder's `pixels`).
"""

from __future__ import annotations

import io
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from lumos.floor.errors import UserError
from lumos.schemas import features
from lumos.schemas import images as cols
from lumos.schemas.features import shape_of
from lumos.schemas.images import library_versions

PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}


@dataclass
class Encoder:
    """`random_weights` builds the real architecture without its weights: for tests of the real code path
    only, never a fallback when weights are missing."""

    name: str
    weights: str | None = None  # local path overriding the hub id
    random_weights: bool = False
    precision: str = "fp32"  # compute dtype; the stored features are fp16 either way
    family: str | None = None  # the registry name, where `name` (the features' name) says more: sd-vae-512
    model: object = field(default=None, init=False, repr=False)
    device: str = field(default="cpu", init=False, repr=False)

    # --- each family fills these in ---
    def inputs(self) -> list[str]:
        """The images-table columns this encoder reads."""
        raise NotImplementedError

    def fields(self) -> list[pa.Field]:
        """The feature columns it writes."""
        raise NotImplementedError

    def prepare(self, batch: pa.Table) -> pa.Table:
        """CPU stage: the input columns replaced by what the model takes (pixels, token ids)."""
        raise NotImplementedError

    def in_flight(self) -> str | list[str]:
        """The in-flight column(s) `prepare` adds and `encode` consumes."""
        raise NotImplementedError

    def encode(self, batch: pa.Table) -> dict[str, pa.Array]:
        """Model stage: prepared rows → {feature column: array}, null where a row has no features."""
        raise NotImplementedError

    def tally(self) -> list[tuple[str, str]]:
        """(reason, Lance filter) pairs: the rows without (some) features, counted per reason from the table's
        small columns once a pass is done."""
        raise NotImplementedError

    def build(self):
        """The model with its weights (or the seeded test model, or random weights on request)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """Provenance beyond the common fields: weights id, preprocessing, ..."""
        raise NotImplementedError

    def check(self) -> None:
        """Fail in one line, before any work starts, when the weights cannot be had."""
        self.build()

    # --- shared ---
    def load(self, device: str = "cpu") -> "Encoder":
        self.device = device
        self.model = self.build().eval().to(device)
        for p in self.model.parameters():  # frozen: outputs carry no autograd graph (no global grad switch)
            p.requires_grad_(False)
        return self

    def autocast(self):
        """bf16 compute on request (T5 must never run in fp16: it overflows to NaN)."""
        import torch

        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast("cuda" if str(self.device).startswith("cuda") else "cpu", dtype=torch.bfloat16)

    def provenance(self) -> dict:
        return {
            "encoder": self.family or self.name,
            **self.describe(),
            "weights_path": self.weights,
            "random_weights": self.random_weights,
            "dtype": "float16",
            "compute_dtype": PRECISIONS[self.precision],
            "shapes": {f.name: list(shape_of(f)) for f in self.fields()},
            "versions": library_versions("torch", "diffusers", "timm", "transformers", "open_clip_torch"),
        }


@dataclass
class ImageEncoder(Encoder):
    """An image encoder: one image → float32 (3, S, S) on CPU; a batched forward → fp16 vectors."""

    @property
    def input_size(self) -> int:
        """Side of the square input the model takes."""
        raise NotImplementedError

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One RGB image → float32 (3, S, S), ready for the model."""
        raise NotImplementedError

    def forward(self, pixels) -> dict[str, np.ndarray]:
        """(N, 3, S, S) float32 tensor → {column: (N, ...) float16}."""
        raise NotImplementedError

    def inputs(self) -> list[str]:
        return [cols.IMAGE]

    def in_flight(self) -> str:
        """The in-flight column of this encoder's preprocessed pixels."""
        return features.pixels_column(self.name)

    def fields(self) -> list[pa.Field]:
        return [*self.payload_fields(), features.ok_field(features.ok_column(self.name))]

    def payload_fields(self) -> list[pa.Field]:
        """The feature tensors it stores (the `_ok` column comes on top)."""
        raise NotImplementedError

    def pixels(self, images: list[Image.Image | None]) -> pa.ListArray:
        """Decoded RGB images (None: did not decode) → this encoder's preprocessed pixels, flattened float32,
        null where there is no image or preprocessing fails."""
        arrays, size = [], None
        for image in images:
            try:
                x = None if image is None else self.preprocess(image)
            except Exception:  # noqa: BLE001 - counted as failed_to_decode
                x = None
            if x is not None:
                size = x.size
            arrays.append(None if x is None else x.reshape(-1))
        flat = [a if a is not None else np.zeros(size or 1, np.float32) for a in arrays]
        values = pa.array(np.concatenate(flat) if flat else np.zeros(0, np.float32))
        offsets = pa.array(np.concatenate([[0], np.cumsum([len(a) for a in flat])]).astype(np.int32))
        return pa.ListArray.from_arrays(offsets, values, mask=pa.array([a is None for a in arrays]))

    def prepared(self, images: list[Image.Image | None]) -> dict[str, pa.Array]:
        """Decoded images → this encoder's in-flight columns (its pixels; bucketed latents add the bucket)."""
        return {self.in_flight(): self.pixels(images)}

    def prepare(self, batch: pa.Table) -> pa.Table:
        """Decode and preprocess for this encoder alone (the encode job decodes once for all: decode_images)."""
        prepared = self.prepared(decode_images(batch[cols.IMAGE].to_pylist()))
        batch = batch.drop_columns([cols.IMAGE])
        for name, column in prepared.items():
            batch = batch.append_column(name, column)
        return batch

    def encode_images(self, images: list[Image.Image]) -> dict[str, np.ndarray]:
        """In-process, for samplers and evaluation: images → {column: (N, ...) fp16}, preprocessed and
        computed exactly as the encode job does."""
        import torch

        pixels = torch.from_numpy(np.stack([self.preprocess(im.convert("RGB")) for im in images]))
        with torch.inference_mode(), self.autocast():
            return self.forward(pixels.to(self.device))

    def encode(self, batch: pa.Table) -> dict[str, pa.Array]:
        import torch

        column = batch[self.in_flight()]
        ok = pc.is_valid(column).to_numpy(zero_copy_only=False)
        results = {}
        if ok.any():
            flat = column.filter(pa.array(ok)).combine_chunks().flatten().to_numpy()
            side = self.input_size
            pixels = torch.from_numpy(flat.reshape(-1, 3, side, side).copy())  # Arrow buffers are read-only
            with torch.inference_mode(), self.autocast():
                results = self.forward(pixels.to(self.device))
        out = {f.name: fixed_column(results.get(f.name), ok, f.type.list_size) for f in self.payload_fields()}
        out[features.ok_column(self.name)] = pa.array(ok, pa.bool_())
        return out

    def tally(self) -> list[tuple[str, str]]:
        return [("failed_to_decode", f"{features.ok_column(self.name)} = false")]


def decode_images(blobs: list[bytes | None]) -> list[Image.Image | None]:
    """Image bytes → RGB images, decoded once for every image encoder of the job (None: does not decode)."""
    out = []
    for data in blobs:
        try:
            with Image.open(io.BytesIO(data)) as im:
                out.append(im.convert("RGB"))
        except Exception:  # noqa: BLE001 - counted as failed_to_decode
            out.append(None)
    return out


def fixed_column(values: np.ndarray | None, ok: np.ndarray, size: int) -> pa.FixedSizeListArray:
    """(n_ok, size) fp16 values for the rows where `ok` → a nullable fixed_size_list<halffloat> column."""
    full = np.zeros((len(ok), size), np.float16)
    if values is not None:
        full[ok] = values.reshape(int(ok.sum()), size)
    return pa.FixedSizeListArray.from_arrays(pa.array(full.reshape(-1)), size, mask=pa.array(~ok))


def missing_weights(what: str, source: str, err: Exception, flag: str = "--weights PATH") -> UserError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError(f"cannot load the weights of {what} ({source}): {first}. Put them in the Hugging Face "
                     f"cache (HF_HOME) on a machine with access, or pass {flag}")


def center_square(image: Image.Image) -> Image.Image:
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def square_pixels(image: Image.Image, side: int) -> np.ndarray:
    """The center square resized to `side` (bicubic), in [-1, 1]: float32 (3, side, side)."""
    square = center_square(image).resize((side, side), Image.Resampling.BICUBIC)
    return (np.asarray(square, np.float32) / 127.5 - 1.0).transpose(2, 0, 1)


def resize_crop_normalise(image: Image.Image, resize: int, crop: int, mean, std, resample: str = "bicubic") -> np.ndarray:
    """The usual eval transform: short side to `resize` (bicubic, or bilinear), center `crop`, (x - mean) / std
    → (3, S, S)."""
    w, h = image.size
    scale = resize / min(w, h)
    image = image.resize((max(resize, round(w * scale)), max(resize, round(h * scale))),
                         Image.Resampling.BILINEAR if resample == "bilinear" else Image.Resampling.BICUBIC)
    left, top = (image.width - crop) // 2, (image.height - crop) // 2
    image = image.crop((left, top, left + crop, top + crop))
    x = (np.asarray(image, np.float32) / 255.0 - mean) / std
    return x.transpose(2, 0, 1).astype(np.float32)
