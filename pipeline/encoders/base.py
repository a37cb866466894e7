"""What every frozen image encoder provides to the encode job."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from PIL import Image

from lumos.curation.errors import UserError
from lumos.schemas.features import shape_of
from lumos.schemas.images import library_versions


@dataclass
class ImageEncoder:
    """An encoder: CPU preprocessing of one image, a batched forward, its output columns and provenance.

    `random_weights` builds the real architecture without its weights: for tests of the real code path
    only, never a fallback when weights are missing.
    """

    name: str
    weights: str | None = None  # local path overriding the hub id
    random_weights: bool = False
    model: object = field(default=None, init=False, repr=False)

    # --- each family fills these in ---
    @property
    def input_size(self) -> int:
        """Side of the square input the model takes."""
        raise NotImplementedError

    def fields(self) -> list[pa.Field]:
        raise NotImplementedError

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """One RGB image → float32 (3, H, W), ready for the model."""
        raise NotImplementedError

    def build(self):
        """The model with its weights (or the seeded test model, or random weights on request)."""
        raise NotImplementedError

    def forward(self, pixels) -> dict[str, np.ndarray]:
        """(N, 3, H, W) float32 tensor → {column: (N, ...) float16}."""
        raise NotImplementedError

    def describe(self) -> dict:
        """Provenance beyond the common fields: weights id, preprocessing, ..."""
        raise NotImplementedError

    # --- shared ---
    def load(self, device: str = "cpu") -> "ImageEncoder":
        import torch

        self.device = device
        self.model = self.build().eval().to(device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        torch.set_grad_enabled(False)
        return self

    def provenance(self) -> dict:
        return {
            "encoder": self.name,
            **self.describe(),
            "weights_path": self.weights,
            "random_weights": self.random_weights,
            "dtype": "float16",
            "shapes": {f.name: list(shape_of(f)) for f in self.fields()},
            "versions": library_versions("torch", "diffusers", "timm", "transformers", "open_clip_torch"),
        }


@contextmanager
def quiet_loading():
    """Silence the libraries' own warnings and error logs while weights load: a failure is reported once,
    in our one line, and a success needs no chatter."""
    logging.disable(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def missing_weights(what: str, source: str, err: Exception, flag: str = "--weights PATH") -> UserError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError(f"cannot load the weights of {what} ({source}): {first}. Put them in the Hugging Face "
                     f"cache (HF_HOME) on a machine with access, or pass {flag}")


def center_square(image: Image.Image) -> Image.Image:
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))
