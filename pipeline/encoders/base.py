"""What every frozen encoder provides to the encode job, and what image encoders share.

An encoder turns a batch of images-table rows into feature columns in two steps: `prepare` on CPU (decode
and resize images, tokenize captions) and `encode` where the model lives (an actor, a GPU when present).
Both take and return Arrow tables that carry `id` and `shard` through.
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

    def encode(self, batch: pa.Table) -> pa.Table:
        """Model stage: prepared rows → (id, shard, feature columns), null where a row has no features."""
        raise NotImplementedError

    def tally(self, rows: pa.Table) -> dict[str, int]:
        """Rows of an encoded batch without (some) features, per reason, for the job's stats."""
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
            "encoder": self.name,
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

    def prepare(self, batch: pa.Table) -> pa.Table:
        arrays, size = [], None
        for data in batch[cols.IMAGE].to_pylist():
            try:
                with Image.open(io.BytesIO(data)) as im:
                    x = self.preprocess(im.convert("RGB"))
                size = x.size
                arrays.append(x.reshape(-1))
            except Exception:  # noqa: BLE001 - counted as failed_to_decode
                arrays.append(None)
        flat = [a if a is not None else np.zeros(size or 1, np.float32) for a in arrays]
        values = pa.array(np.concatenate(flat) if flat else np.zeros(0, np.float32))
        offsets = pa.array(np.concatenate([[0], np.cumsum([len(a) for a in flat])]).astype(np.int32))
        pixels = pa.ListArray.from_arrays(offsets, values, mask=pa.array([a is None for a in arrays]))
        return batch.drop_columns([cols.IMAGE]).append_column(features.PIXELS, pixels)

    def encode_images(self, images: list[Image.Image]) -> dict[str, np.ndarray]:
        """In-process, for samplers and evaluation: images → {column: (N, ...) fp16}, preprocessed and
        computed exactly as the encode job does."""
        import torch

        pixels = torch.from_numpy(np.stack([self.preprocess(im.convert("RGB")) for im in images]))
        with torch.inference_mode(), self.autocast():
            return self.forward(pixels.to(self.device))

    def encode(self, batch: pa.Table) -> pa.Table:
        import torch

        ok = pc.is_valid(batch[features.PIXELS]).to_numpy(zero_copy_only=False)
        results = {}
        if ok.any():
            flat = batch.filter(pa.array(ok))[features.PIXELS].combine_chunks().flatten().to_numpy()
            side = self.input_size
            pixels = torch.from_numpy(flat.reshape(-1, 3, side, side).copy())  # Arrow buffers are read-only
            with torch.inference_mode(), self.autocast():
                results = self.forward(pixels.to(self.device))
        out = pa.table({cols.ID: batch[cols.ID], features.SHARD: batch[features.SHARD]})
        for f in self.fields():
            out = out.append_column(f.name, fixed_column(results.get(f.name), ok, f.type.list_size))
        return out

    def tally(self, rows: pa.Table) -> dict[str, int]:
        return {"failed_to_decode": rows[self.fields()[0].name].null_count}


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


def resize_crop_normalise(image: Image.Image, resize: int, crop: int, mean, std) -> np.ndarray:
    """The usual eval transform: short side to `resize` (bicubic), center `crop`, (x - mean) / std → (3, S, S)."""
    w, h = image.size
    scale = resize / min(w, h)
    image = image.resize((max(resize, round(w * scale)), max(resize, round(h * scale))), Image.Resampling.BICUBIC)
    left, top = (image.width - crop) // 2, (image.height - crop) // 2
    image = image.crop((left, top, left + crop, top + crop))
    x = (np.asarray(image, np.float32) / 255.0 - mean) / std
    return x.transpose(2, 0, 1).astype(np.float32)
