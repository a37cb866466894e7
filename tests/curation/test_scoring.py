"""The aesthetic predictor: batched Ray-run scores equal a plain one-image computation of the formula;
scores are deterministic; a threshold keeps exactly the rows at or above it; the real configuration is
OpenAI CLIP ViT-L-14 with QuickGELU and never falls back to random weights."""

import io
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from lumos.curation import aesthetic
from lumos.curation.dump_job import AestheticGate
from lumos.curation.sample import encode, synthetic_image
from lumos.curation.scoring import add_scores
from lumos.floor.errors import UserError
from lumos.schemas import images as cols

IMAGES = [encode(synthetic_image(96 + 7 * i, 80 + 5 * i, seed=i)) for i in range(10)]


def _rows(images):
    return pa.Table.from_pylist(
        [{cols.ID: f"id{i}", cols.IMAGE: data, cols.DROP_REASON: None} for i, data in enumerate(images)],
        schema=cols.WORK_SCHEMA)


def _ray_scores(images, batch_size=4):
    import ray

    ds = add_scores(ray.data.from_arrow(_rows(images)), "tiny", batch_size=batch_size)
    out = pa.concat_tables(list(ds.iter_batches(batch_format="pyarrow", batch_size=None)))
    return dict(zip(out[cols.ID].to_pylist(), out[cols.AESTHETIC].to_pylist()))


def _reference(data: bytes) -> float:
    """CLIP preprocessing → encode_image → L2 norm → MLP, one image at a time, written out plainly."""
    model = aesthetic.load_aesthetic_model("tiny")
    transform = aesthetic.preprocess(aesthetic.SPECS["tiny"].image_size)
    x = transform(Image.open(io.BytesIO(data))).unsqueeze(0)  # (1, 3, 64, 64)
    with torch.no_grad():
        emb = model.clip.encode_image(x)  # (1, 768)
        emb = emb / emb.norm(dim=-1, keepdim=True)
        return float(model.mlp(emb)[0, 0])


def test_ray_batched_scores_match_single_image_reference(ray_session):
    scores = _ray_scores(IMAGES)
    for i, data in enumerate(IMAGES):
        assert scores[f"id{i}"] == pytest.approx(_reference(data), abs=1e-4)
    assert np.std(list(scores.values())) > 0.1  # the images really score differently


def test_scores_are_deterministic_and_rows_without_image_get_none(ray_session):
    first = _ray_scores(IMAGES + [None], batch_size=3)
    assert first == _ray_scores(IMAGES + [None], batch_size=3)  # the same input twice: bit-identical
    other_batching = _ray_scores(IMAGES + [None], batch_size=5)  # CPU kernels block by batch: 1e-4
    assert all(other_batching[k] == pytest.approx(v, abs=1e-4) for k, v in first.items() if v is not None)
    assert first["id10"] is None


def test_threshold_keeps_exactly_the_rows_at_or_above_it(ray_session):
    scores = _ray_scores(IMAGES)
    bound = sorted(scores.values())[4]  # a score that exists: equal must be kept
    table = pa.table({cols.AESTHETIC: pa.array(list(scores.values()) + [float("nan"), None], pa.float32()),
                      cols.DROP_REASON: pa.nulls(12, pa.string())})
    gated = AestheticGate(bound)(table)
    kept = [s for s, r in zip(table[cols.AESTHETIC].to_pylist(), gated[cols.DROP_REASON].to_pylist()) if r is None]
    assert sorted(kept) == sorted(s for s in scores.values() if s >= np.float32(bound))
    assert len(kept) == 6
    assert gated[cols.DROP_REASON].to_pylist()[-2:] == ["aesthetic_missing", "aesthetic_missing"]


def test_real_configuration_asks_open_clip_for_quickgelu_openai(monkeypatch):
    import open_clip

    asked = {}

    def fake_create(name, pretrained=None, **kw):
        asked.update(name=name, pretrained=pretrained)
        raise RuntimeError("no network here")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake_create)
    with pytest.raises(UserError) as err:
        aesthetic.load_aesthetic_model("laion-v2")
    assert asked == {"name": "ViT-L-14-quickgelu", "pretrained": "openai"}
    assert "ViT-L-14-quickgelu" in str(err.value) and "--clip-weights" in str(err.value)


def test_head_matches_the_published_state_dict_layout():
    keys = set(aesthetic.AestheticMLP().state_dict())
    assert keys == {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
    spec = aesthetic.SPECS["laion-v2"]
    assert (spec.clip_model, spec.clip_pretrained, spec.embed_dim, spec.image_size) == \
        ("ViT-L-14-quickgelu", "openai", 768, 224)


def test_missing_real_weights_fail_in_one_line_without_fallback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "t")}
    (tmp_path / "in" / "train" / "n01440764").mkdir(parents=True)
    (tmp_path / "in" / "train" / "n01440764" / "a.JPEG").write_bytes(IMAGES[0])
    result = subprocess.run([sys.executable, "-m", "lumos.curation.cli", "imagenet", "--input", str(tmp_path / "in"),
                             "--output", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: cannot load the CLIP weights"), lines
    assert not (tmp_path / "out").exists()


def test_calibrated_test_model_is_seeded():
    a, b = aesthetic.load_aesthetic_model("tiny"), aesthetic.load_aesthetic_model("tiny")
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(a(x), b(x))
