"""`lumos-encode` end to end through real Ray and Lance on an images table made by `lumos-curate`, with the
seeded tiny encoders; and the real architectures (random weights) through the same code path."""

import io
import json

import lance
import numpy as np
import pytest
import torch
from PIL import Image

from lumos.curation.dump_job import ScoreConfig, run_dump_job
from lumos.curation.dumps import ImageNetReader
from lumos.curation.prepare import PrepareConfig
from lumos.curation.sample import encode, synthetic_image
from lumos.pipeline.encode_job import EncoderConfig, run_encode, stats_file
from lumos.pipeline.encoders import get_encoder
from lumos.schemas import features
from lumos.schemas import images as cols


@pytest.fixture(scope="module")
def images_table(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("encode")
    for i in range(14):
        path = root / "in" / "train" / f"n0144076{i % 3}" / f"x{i}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(synthetic_image(300 + 13 * i, 260 + 7 * i, seed=i)))
    (root / "in" / "train" / "n01440760" / "broken.JPEG").write_bytes(b"\xff\xd8 not really")
    run_dump_job(ImageNetReader(str(root / "in")), str(root / "curated"), PrepareConfig(min_size=64, image_size=256),
                 ScoreConfig(model="tiny"), {"input": "fixture"}, say=lambda *_: None)
    return str(root / "curated" / "images.lance")


def _columns(uri, names):
    t = lance.dataset(uri).to_table(columns=[cols.ID, *names]).sort_by(cols.ID)
    return {n: t[n] for n in [cols.ID, *names]}


def _reference(images_uri, name, ids):
    """The same encoder in this process, one image at a time, on the same preprocessed pixels."""
    encoder = get_encoder(name).load()
    ds = lance.dataset(images_uri)
    all_ids = ds.to_table(columns=[cols.ID])[cols.ID].to_pylist()
    out = {}
    for id_ in ids:
        blob = ds.take_blobs(cols.IMAGE, indices=[all_ids.index(id_)])[0].read()
        x = torch.from_numpy(encoder.preprocess(Image.open(io.BytesIO(blob)).convert("RGB"))[None])
        out[id_] = encoder.forward(x)
    return out


def test_encoders_write_every_id_once_in_fp16_matching_a_plain_forward(images_table, tmp_path):
    out = str(tmp_path / "features.lance")
    image_ids = sorted(lance.dataset(images_table).to_table(columns=[cols.ID])[cols.ID].to_pylist())
    assert len(image_ids) == 14

    run_encode(images_table, out, [EncoderConfig("tiny-vae")], say=lambda *_: None)
    vae_cols = [features.mean_column("tiny-vae"), features.std_column("tiny-vae")]
    first = _columns(out, vae_cols)
    assert first[cols.ID].to_pylist() == image_ids  # every id exactly once

    stats = run_encode(images_table, out, [EncoderConfig("tiny-vae"), EncoderConfig("tiny-dino")],
                       say=lambda *_: None)
    assert list(stats["encoders"]) == ["tiny-dino"]  # the VAE was not run again
    ds = lance.dataset(out)
    dino = features.cls_column("tiny-dino")
    both = _columns(out, [*vae_cols, dino])
    assert both[cols.ID].to_pylist() == image_ids
    for c in vae_cols:  # byte-identical after the second encoder was added
        assert both[c].equals(first[c])
    for f in (ds.schema.field(c) for c in [*vae_cols, dino]):
        assert f.type.value_type == "halffloat"
    assert features.shape_of(ds.schema.field(vae_cols[0])) == (4, 32, 32)
    meta = {k.decode(): v.decode() for k, v in ds.schema.metadata.items()}
    prov = json.loads(meta[features.META_ENCODER + "tiny-vae"])
    assert prov["resolution"] == 256 and prov["scaling_factor"] == 0.18215 and prov["dtype"] == "float16"

    reference = {**_reference(images_table, "tiny-vae", image_ids[:5])}
    dino_ref = _reference(images_table, "tiny-dino", image_ids[:5])
    for i, id_ in enumerate(image_ids[:5]):
        for c in vae_cols:
            stored = np.asarray(both[c][i].as_py(), np.float32)
            assert np.allclose(stored, reference[id_][c][0].astype(np.float32), atol=1e-3, rtol=1e-3)
        stored = np.asarray(both[dino][i].as_py(), np.float32)
        assert np.allclose(stored, dino_ref[id_][dino][0].astype(np.float32), atol=1e-3, rtol=1e-3)

    with open(stats_file(out)) as f:  # the job's stats, beside the table
        assert {k: v["images"] for k, v in json.load(f).items()} == {"tiny-vae": 14, "tiny-dino": 14}

    version = lance.dataset(out).version
    again = run_encode(images_table, out, [EncoderConfig("tiny-vae"), EncoderConfig("tiny-dino")],
                       say=lambda *_: None)
    assert again["encoders"] == {} and lance.dataset(out).version == version  # finished: a no-op


@pytest.mark.parametrize("name, columns", [("sd-vae", {"sd_vae_mean": 4 * 32 * 32, "sd_vae_std": 4 * 32 * 32}),
                                           ("dino-b", {"dino_b_cls": 768})])
def test_real_architectures_with_random_weights_through_the_same_path(name, columns):
    encoder = get_encoder(name, 256, random_weights=True).load()
    x = np.stack([encoder.preprocess(synthetic_image(400, 300, seed=s)) for s in range(2)])
    out = encoder.forward(torch.from_numpy(x))
    assert {k: v.shape[1] for k, v in out.items()} == columns
    for v in out.values():
        assert v.dtype == np.float16 and np.isfinite(v).all()
    assert [f.name for f in encoder.fields()] == list(columns)
