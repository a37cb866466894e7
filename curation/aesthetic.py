"""The LAION improved aesthetic predictor V2: OpenAI CLIP ViT-L/14 image embedding, L2-normalised, into an
MLP 768→1024→128→64→16→1. COYO's `aesthetic_score_laion_v2` and LAION's AESTHETIC_SCORE were made with it,
and the paper's "aesthetic > 5.0" is its scale.

The CLIP must be `ViT-L-14-quickgelu` with `pretrained="openai"`: plain `ViT-L-14` loads those weights with
only a warning and gives wrong embeddings (its GELU is not the QuickGELU they were trained with).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lumos.floor.errors import UserError
from lumos.floor.normalisation import OPENAI_MEAN, OPENAI_STD

MLP_WEIGHTS_FILE = "sac+logos+ava1-l14-linearMSE.pth"
MLP_WEIGHTS_URL = ("https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
                   + MLP_WEIGHTS_FILE)


class AestheticMLP(nn.Module):
    """The predictor's head; its module names match the published state dict (layers.0, layers.2, ...)."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class AestheticModel(nn.Module):
    def __init__(self, clip: nn.Module, mlp: AestheticMLP):
        super().__init__()
        self.clip, self.mlp = clip, mlp

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (N, 3, S, S) CLIP-preprocessed → (N,)
        emb = self.clip.encode_image(pixels).float()  # (N, D)
        return self.mlp(F.normalize(emb, dim=-1)).squeeze(-1)


@dataclass(frozen=True)
class AestheticSpec:
    name: str
    clip_model: str  # an open_clip model name, or a tiny config of ours
    clip_pretrained: str | None  # open_clip pretrained tag; None for seeded random test models
    image_size: int
    embed_dim: int


SPECS = {
    "laion-v2": AestheticSpec("laion-v2", "ViT-L-14-quickgelu", "openai", 224, 768),
    # Test-only models: seeded, random, clearly not aesthetic predictors. Never a fallback.
    "tiny": AestheticSpec("tiny", "lumos-tiny-clip", None, 64, 768),
    "bench-b16": AestheticSpec("bench-b16", "ViT-B-16", None, 224, 512),
}
USER_MODELS = ("laion-v2", "tiny")  # what --aesthetic-model accepts; bench-b16 is for bench/score.py only
TINY_CLIP = {
    "embed_dim": 768,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def preprocess(image_size: int):
    """CLIP's evaluation transform: resize the short side (bicubic), center crop, normalise (OpenAI)."""
    from open_clip.transform import image_transform

    return image_transform(image_size, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD)


def load_aesthetic_model(name: str, clip_weights: str | None = None, mlp_weights: str | None = None,
                         device: str = "cpu") -> AestheticModel:
    if name not in SPECS:
        raise UserError(f"unknown aesthetic model {name!r}; choose one of {', '.join(SPECS)}")
    spec = SPECS[name]
    if spec.clip_pretrained is None:
        model = _seeded_model(spec)
    else:
        model = AestheticModel(_load_clip(spec, clip_weights), _load_mlp(spec, mlp_weights))
    return model.eval().to(device)


def _seeded_model(spec: AestheticSpec) -> AestheticModel:
    import open_clip
    from open_clip.model import CLIP

    torch.manual_seed(0)
    clip = CLIP(**TINY_CLIP) if spec.clip_model == "lumos-tiny-clip" else open_clip.create_model(spec.clip_model)
    model = AestheticModel(clip, AestheticMLP(spec.embed_dim)).eval()
    _calibrate(model, spec.image_size)
    return model


def _calibrate(model: AestheticModel, image_size: int) -> None:
    """Put a random head's scores on the predictor's scale (about 5 ± 1 over our synthetic pictures), so
    that thresholds behave as with the real model. Deterministic: same seed, same pictures."""
    from lumos.curation.sample import synthetic_image

    transform = preprocess(image_size)
    pixels = torch.stack([transform(synthetic_image(96, 64, seed)) for seed in range(8)])
    last = model.mlp.layers[-1]
    with torch.no_grad():
        scores = model(pixels)
        scale = 1.0 / max(float(scores.std()), 1e-6)
        last.weight.mul_(scale)
        last.bias.mul_(scale).add_(5.0 - float(scores.mean()) * scale)


def _load_clip(spec: AestheticSpec, weights: str | None) -> nn.Module:
    import open_clip

    from lumos.floor.model_loading import quiet_loading

    source = weights or spec.clip_pretrained
    try:
        with quiet_loading():  # open_clip logs the failure itself; we say it once, below
            model, _, _ = open_clip.create_model_and_transforms(spec.clip_model, pretrained=source)
    except Exception as err:  # noqa: BLE001 - every failure to get the weights ends in the same advice
        raise UserError(
            f"cannot load the CLIP weights of the aesthetic predictor (open_clip {spec.clip_model!r}, "
            f"pretrained={source!r}): {str(err).splitlines()[0] if str(err) else type(err).__name__}. "
            f"Put them in the Hugging Face cache (HF_HOME) on a machine with access, or pass --clip-weights PATH"
        ) from None
    return model


def _load_mlp(spec: AestheticSpec, weights: str | None) -> AestheticMLP:
    mlp = AestheticMLP(spec.embed_dim)
    try:
        if weights:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        else:
            state = torch.hub.load_state_dict_from_url(MLP_WEIGHTS_URL, map_location="cpu", weights_only=True,
                                                       file_name=MLP_WEIGHTS_FILE, progress=False)
        mlp.load_state_dict(state)
    except Exception as err:  # noqa: BLE001
        raise UserError(
            f"cannot load the aesthetic MLP weights {MLP_WEIGHTS_FILE} ({weights or MLP_WEIGHTS_URL}): "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}. Download it once and pass "
            f"--aesthetic-weights PATH, or place it in {torch.hub.get_dir()}/checkpoints/"
        ) from None
    return mlp
