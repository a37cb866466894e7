"""The frozen encoders a run's features were made with, rebuilt from its checkpoint's provenance, for
sampling and evaluation: the condition encoder (DINO CLS or T5 tokens, computed exactly as lumos-encode
did) and the VAE (its decoder turns latents into pixels).

Never in the training hot path: only samplers, `--sample-every` grids (the VAE decoder) and evaluation
import the encoder libraries.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lumos.floor.errors import UserError

IGNORED = ("versions", "images")  # as the trainer: library versions and the images path do not matter
COMPUTE = {"float32": "fp32", "bfloat16": "bf16"}


def rebuild(record: dict, role: str, device: torch.device | str = "cpu"):
    """The encoder of one provenance record (`latents` or `condition` of a run), loaded on `device`.

    Fails in one line when the encoder is unknown here, was a random-weights test build (nothing can
    rebuild those weights), does not describe itself the same way any more, or its weights are missing."""
    from lumos.pipeline.encoders import EncoderConfig

    name = record.get("encoder", "?")
    if record.get("random_weights"):
        raise UserError(f"the run's {role} encoder {name} was built with random weights (a test build): "
                        "its features cannot be reproduced, so the run cannot be sampled")
    config = EncoderConfig(name=name, resolution=int(record.get("resolution", 256)),
                           weights=record.get("weights_path"), precision=COMPUTE.get(record.get("compute_dtype"), "fp32"),
                           tokens=record.get("tokens", "cls"), buckets=record.get("buckets", "none"),
                           preprocess=record.get("preprocess", "resize256"),  # dino-b: unnamed before official
                           clean_captions=record.get("clean_captions", "none"))  # T5: unnamed when off
    try:
        encoder = config.build()
    except UserError as err:
        raise UserError(f"the run's {role} encoder is not available here: {err}") from None
    now = {k: v for k, v in encoder.provenance().items() if k not in IGNORED}
    saved = {k: v for k, v in record.items() if k not in IGNORED}
    if now != saved:
        keys = sorted(k for k in set(now) | set(saved) if now.get(k) != saved.get(k))
        raise UserError(f"the run's {role} encoder {name} is built differently here than when the features were "
                        f"made (differs in: {', '.join(keys)})")
    try:
        return encoder.load(str(device))
    except UserError as err:  # lumos-encode's advice (--weights) does not apply: the path is the recorded one
        cause = str(err).split(". Put them")[0]
        raise UserError(f"the run's {role} encoder {name} cannot be loaded here ({cause}); put its weights in the "
                        f"Hugging Face cache (HF_HOME) or at {record.get('weights_path') or 'the path the features were made with'}") from None


class Latents:
    """The run's VAE: images → the pixels its features were made from, latents → images."""

    def __init__(self, record: dict, scaling: float, device: torch.device | str = "cpu"):
        self.vae = rebuild(record, "latents", device)
        self.scaling, self.device = scaling, torch.device(device)

    @property
    def resolution(self) -> int:
        return self.vae.resolution

    def show(self, image: Image.Image) -> np.ndarray:
        """An input image as the VAE saw it (center square, resized): (R, R, 3) uint8."""
        return to_uint8(torch.from_numpy(self.vae.preprocess(image.convert("RGB")))[None])[0]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch: int = 8) -> np.ndarray:
        """(N, 4, h, w) latents as the DiT makes them (scaled) → (N, R, R, 3) uint8."""
        out = []
        for part in latents.split(batch):
            x = self.vae.decode(part.to(self.device, torch.float32) / self.scaling)
            out.append(to_uint8(x))
        return np.concatenate(out)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] → (N, H, W, 3) uint8."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


class ImageCondition:
    """I2I: images → the run's condition tokens (N, T, D), each L2-normalised, as the trainer feeds them: the
    CLS vector as one token, or the token set the run was trained on (`column`, lumos-train
    --condition-tokens)."""

    def __init__(self, record: dict, device: torch.device | str = "cpu", column: str | None = None):
        from lumos.schemas import features

        self.encoder = rebuild(record, "condition", device)
        self.column = column or features.cls_column(self.encoder.name)
        self.shape = tuple(record["shapes"][self.column])  # (D,) or (T, D)
        self.device = torch.device(device)

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        values = torch.from_numpy(self.encoder.encode_images(images)[self.column])  # fp16, as stored
        tokens = values.float().reshape(len(images), -1, self.shape[-1])
        return F.normalize(tokens, dim=-1).to(self.device)


class TextCondition:
    """T2I: captions → T5 tokens padded to the longest (N, L, D) and the mask (N, L), as the trainer feeds them."""

    def __init__(self, record: dict, device: torch.device | str = "cpu"):
        self.encoder = rebuild(record, "condition", device)
        self.device = torch.device(device)

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if any(not (t and t.strip()) for t in texts):
            raise UserError("--prompt: an empty prompt (the unconditional sample is what --cfg guides away from)")
        rows = self.encoder.encode_texts(texts)
        if any(r is None for r in rows):
            raise UserError("the text encoder gave NaN/inf for a prompt")
        return pad_tokens([torch.from_numpy(r) for r in rows], self.device)


def pad_tokens(rows: list[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row (len, D) fp16 tokens → (N, L, D) float32 padded with zeros, (N, L) int64 mask."""
    longest = max(r.shape[0] for r in rows)
    cond = torch.zeros(len(rows), longest, rows[0].shape[1])
    mask = torch.zeros(len(rows), longest, dtype=torch.int64)
    for i, r in enumerate(rows):
        cond[i, :len(r)], mask[i, :len(r)] = r.float(), 1
    return cond.to(device), mask.to(device)
