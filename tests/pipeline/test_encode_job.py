"""`lumos-encode` end to end through real Ray and Lance on an images table made by `lumos-curate`, with the
seeded tiny encoders; and the real architectures (random weights) through the same code path."""

import io
import json
import math
import os

import lance
import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from lumos.curation.dump_job import ScoreConfig, run_dump_job
from lumos.curation.dumps import JourneyDBReader
from lumos.curation.mix_job import run_mix
from lumos.curation.prepare import PrepareConfig
from lumos.curation.sample import encode, synthetic_image
from lumos.floor.errors import UserError
from lumos.pipeline.encode_job import EncoderConfig, check_unique_ids, run_encode, stats_file
from lumos.pipeline.encoders.t5 import T5_XXL
from lumos.schemas import features
from lumos.schemas import images as cols


@pytest.fixture(scope="module")
def images_table(tmp_path_factory, ray_session):
    """An images table made by `lumos-curate journeydb`: prompts as captions, Task2 long captions on every
    other image, one blank prompt."""
    root = tmp_path_factory.mktemp("encode")
    lines = []
    for i in range(14):
        path = root / "jdb" / f"00{i % 2}" / f"x{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(synthetic_image(300 + 13 * i, 260 + 7 * i, seed=i)))
        line = {"img_path": f"./00{i % 2}/x{i}.jpg", "prompt": "" if i == 5 else f"a picture number {i} " * (i + 1)}
        if i % 2 == 0:
            line["Task2"] = {"Caption": f"A longer description of picture {i}, with more words in it."}
        lines.append(json.dumps(line))
    (root / "anno.jsonl").write_text("\n".join(lines) + "\n")
    run_dump_job(JourneyDBReader(str(root / "jdb"), str(root / "anno.jsonl")), str(root / "curated"),
                 PrepareConfig(min_size=64, image_size=256), ScoreConfig(model="tiny"), {"input": "fixture"},
                 say=lambda *_: None)
    return str(root / "curated" / "images.lance")


def _table_with_ids(path, ids, unique_ids=False):
    """An images table written by hand, as a version before key de-duplication could leave one."""
    rows = [{cols.ID: id_, cols.SOURCE: "sam", cols.KEY: f"k{i}", cols.ORIGINAL_WIDTH: 96, cols.ORIGINAL_HEIGHT: 80,
             cols.WIDTH: 96, cols.HEIGHT: 80, cols.SHA256: f"s{i}", cols.IMAGE: encode(synthetic_image(96, 80, seed=i))}
            for i, id_ in enumerate(ids)]
    schema = cols.images_schema({"job": {"source": "sam"}}, unique_ids=unique_ids)
    lance.write_dataset(pa.Table.from_pylist(rows, schema=schema), path, schema=schema, max_rows_per_file=3)
    return path


def test_encode_refuses_repeated_ids_and_trusts_the_unique_ids_marker(images_table, tmp_path):
    assert cols.has_unique_ids(lance.dataset(images_table).schema)  # lumos-curate's tables carry the marker
    ids = ["a", "b", "c", "b", "d", "e", "f", "a", "g"]
    old = _table_with_ids(str(tmp_path / "old.lance"), ids)
    out = str(tmp_path / "features.lance")
    with pytest.raises(UserError) as err:
        run_encode(old, out, [EncoderConfig("tiny-dino")], say=lambda *_: None)
    message = str(err.value)
    assert "\n" not in message and f"images table {old} has 2 repeated ids (e.g. " in message
    assert any(f"e.g. {i}, 2 rows" in message for i in ("a", "b")) and "re-curate" in message
    assert not os.path.exists(out)  # refused before anything was written (the lock's folder included)

    # the marker is trusted: no groupby runs (a table that lied would pass); an unmarked table is checked
    marked = lance.dataset(_table_with_ids(str(tmp_path / "marked.lance"), ids, unique_ids=True))
    check_unique_ids(marked, marked.uri)
    unique = lance.dataset(_table_with_ids(str(tmp_path / "unique.lance"), list("abcdefg")))
    check_unique_ids(unique, unique.uri)

    # mix keeps one row per id and marks its table: that one encodes
    stats = run_mix([old], str(tmp_path / "mix"), {}, dedup=False, seed=0, say=lambda *_: None)
    mixed = str(tmp_path / "mix" / "images.lance")
    assert stats["kept"] == 7 and cols.has_unique_ids(lance.dataset(mixed).schema)
    run_encode(mixed, out, [EncoderConfig("tiny-dino")], say=lambda *_: None)
    assert sorted(lance.dataset(out).to_table(columns=[cols.ID])[cols.ID].to_pylist()) == list("abcdefg")


def _data_files(uri) -> dict[str, int]:
    """Every data file the latest version of the table refers to: path → size."""
    return {d.path: os.path.getsize(os.path.join(uri, "data", d.path))
            for f in lance.dataset(uri).get_fragments() for d in f.metadata.files}


def _columns(uri, names):
    t = lance.dataset(uri).to_table(columns=[cols.ID, *names]).sort_by(cols.ID)
    return {n: t[n] for n in [cols.ID, *names]}


def _rows(images_uri, ids, columns):
    ds = lance.dataset(images_uri)
    table = ds.to_table(columns=[cols.ID, *[c for c in columns if c != cols.IMAGE]])
    all_ids = table[cols.ID].to_pylist()
    out = []
    for id_ in ids:
        row = table.slice(all_ids.index(id_), 1).to_pylist()[0]
        if cols.IMAGE in columns:
            row[cols.IMAGE] = ds.take_blobs(cols.IMAGE, indices=[all_ids.index(id_)])[0].read()
        out.append(row)
    return out


def _image_reference(images_uri, name, ids):
    """The same image encoder in this process, one image at a time, on the same preprocessed pixels."""
    encoder = EncoderConfig(name).build().load()
    out = {}
    for row in _rows(images_uri, ids, [cols.IMAGE]):
        x = torch.from_numpy(encoder.preprocess(Image.open(io.BytesIO(row[cols.IMAGE])).convert("RGB"))[None])
        out[row[cols.ID]] = encoder.forward(x)
    return out


def _text_reference(images_uri, name, ids):
    """The same T5 in this process, one caption at a time, padded to 120 with no trimming."""
    encoder = EncoderConfig(name).build().load()
    tokenizer = encoder.tokenizer()
    out = {}
    for row in _rows(images_uri, ids, [cols.CAPTION]):
        tok = tokenizer([encoder.clean(row[cols.CAPTION])], max_length=120, padding="max_length", truncation=True,
                        return_tensors="pt")
        hidden = encoder.model(**tok).last_hidden_state[0]  # (120, D)
        n = int(tok["attention_mask"].sum())
        out[row[cols.ID]] = (n, hidden[:n].numpy())
    return out


def test_encoders_write_every_id_once_in_fp16_matching_a_plain_forward(images_table, tmp_path):
    out = str(tmp_path / "features.lance")
    image_ids = sorted(lance.dataset(images_table).to_table(columns=[cols.ID])[cols.ID].to_pylist())
    assert len(image_ids) == 14

    run_encode(images_table, out, [EncoderConfig("tiny-vae"), EncoderConfig("tiny-dino")], say=lambda *_: None)
    vae_cols = [features.mean_column("tiny-vae"), features.std_column("tiny-vae")]
    dino = features.cls_column("tiny-dino")
    first = _columns(out, [*vae_cols, dino])
    assert first[cols.ID].to_pylist() == image_ids  # every id exactly once
    before = _data_files(out)
    ds = lance.dataset(out)  # fragment for fragment like the images table, one data file per pass
    assert [f.metadata.physical_rows for f in ds.get_fragments()] == \
        [f.count_rows() for f in lance.dataset(images_table).get_fragments() if f.count_rows()]
    assert {len(f.metadata.files) for f in ds.get_fragments()} == {2}  # ids, then both image encoders

    stats = run_encode(images_table, out, [EncoderConfig("tiny-vae"), EncoderConfig("tiny-dino"),
                                           EncoderConfig("tiny-t5")], say=lambda *_: None)
    assert list(stats["encoders"]) == ["tiny-t5"]  # the image encoders were not run again
    after = _data_files(out)  # the existing columns' files: the same paths, the same sizes, on disk
    fragments = len(lance.dataset(out).get_fragments())
    assert len(before) == 2 * fragments and len(after) == 3 * fragments  # one new file a fragment: tiny-t5's
    assert {p: after.get(p) for p in before} == before
    for path, size in before.items():
        assert os.path.getsize(os.path.join(out, "data", path)) == size
    t5_tokens, t5_len = features.tokens_column("tiny-t5"), features.len_column("tiny-t5")
    t5_long = [features.long_tokens_column("tiny-t5"), features.long_len_column("tiny-t5")]
    both = _columns(out, [*vae_cols, dino, t5_tokens, t5_len, *t5_long])
    assert both[cols.ID].to_pylist() == image_ids
    for c in [*vae_cols, dino]:  # byte-identical after the text encoder was added
        assert both[c].equals(first[c])
    ds = lance.dataset(out)
    for c in [*vae_cols, dino, t5_tokens, t5_long[0]]:
        assert ds.schema.field(c).type.value_type == "halffloat"
    assert features.shape_of(ds.schema.field(vae_cols[0])) == (4, 32, 32)
    assert features.shape_of(ds.schema.field(t5_tokens)) == (-1, 32)
    meta = {k.decode(): v.decode() for k, v in ds.schema.metadata.items()}
    prov = json.loads(meta[features.META_ENCODER + "tiny-vae"])
    assert prov["resolution"] == 256 and prov["scaling_factor"] == 0.18215 and prov["dtype"] == "float16"
    assert json.loads(meta[features.META_ENCODER + "tiny-t5"])["max_tokens"] == 120

    probe = image_ids[:6]
    vae_ref, dino_ref = _image_reference(images_table, "tiny-vae", probe), _image_reference(images_table, "tiny-dino", probe)
    for i, id_ in enumerate(probe):
        for c in vae_cols:
            stored = np.asarray(both[c][i].as_py(), np.float32)
            assert np.allclose(stored, vae_ref[id_][c][0].astype(np.float32), atol=1e-3, rtol=1e-3)
        stored = np.asarray(both[dino][i].as_py(), np.float32)
        assert np.allclose(stored, dino_ref[id_][dino][0].astype(np.float32), atol=1e-3, rtol=1e-3)

    captions = {r[cols.ID]: r for r in _rows(images_table, image_ids, [cols.CAPTION, cols.LONG_CAPTION])}
    blank = [id_ for id_ in image_ids if not captions[id_][cols.CAPTION]]
    assert len(blank) == 1
    with_caption = [id_ for id_ in image_ids if id_ not in blank]
    text_ref = _text_reference(images_table, "tiny-t5", with_caption)
    for i, id_ in enumerate(image_ids):
        if id_ in blank:  # no caption: nulls, counted
            assert both[t5_tokens][i].as_py() is None and both[t5_len][i].as_py() is None
            continue
        n, want = text_ref[id_]
        assert both[t5_len][i].as_py() == n
        stored = np.asarray(both[t5_tokens][i].as_py(), np.float32).reshape(n, 32)  # only the valid tokens
        assert np.allclose(stored, want, atol=1e-3, rtol=1e-3)
    assert max(text_ref[i][0] for i in with_caption) == 120  # the longest prompt was cut at 120 tokens
    has_long = [captions[i][cols.LONG_CAPTION] is not None for i in image_ids]
    assert [v is not None for v in both[t5_long[1]].to_pylist()] == has_long and sum(has_long) == 7

    with open(stats_file(out)) as f:  # the job's stats, beside the table
        saved = json.load(f)
    assert {k: v["rows"] for k, v in saved.items()} == {"tiny-vae": 14, "tiny-dino": 14, "tiny-t5": 14}
    assert saved["tiny-vae"]["failed_to_decode"] == 0
    assert (saved["tiny-t5"]["no_caption"], saved["tiny-t5"]["no_long_caption"], saved["tiny-t5"]["not_finite"]) \
        == (1, 7, 0)

    version = lance.dataset(out).version
    again = run_encode(images_table, out, [EncoderConfig("tiny-vae"), EncoderConfig("tiny-dino"),
                                           EncoderConfig("tiny-t5")], say=lambda *_: None)
    assert again["encoders"] == {} and lance.dataset(out).version == version  # finished: a no-op


def _batch(count=3):
    """Rows as the encode job hands them to an encoder: id, shard and the images-table columns."""
    return pa.table({cols.ID: [f"r{i}" for i in range(count)], features.SHARD: pa.array([0] * count, pa.int64()),
                     cols.IMAGE: pa.array([encode(synthetic_image(400, 300, seed=i)) for i in range(count)],
                                          pa.large_binary()),
                     cols.CAPTION: [f"a photo of thing {i} " * (i + 1) for i in range(count)],
                     cols.LONG_CAPTION: ["A long caption."] + [None] * (count - 1)})


def _run_encoder(encoder, batch):
    """prepare (the CPU stage) then encode (the actor stage): the job's code path, in this process."""
    out = encoder.encode(encoder.prepare(batch.select([cols.ID, features.SHARD, *encoder.inputs()])))
    return pa.table({cols.ID: batch[cols.ID], features.SHARD: batch[features.SHARD], **out})


# A small T5 v1.1 config (t5-v1_1-small's shape): the XXL code path at a size a CPU test can run.
T5_SMALL = {**T5_XXL, "d_model": 512, "d_kv": 64, "d_ff": 1024, "num_layers": 8, "num_heads": 6}


@pytest.mark.parametrize("name, arch, shapes", [
    ("sd-vae", None, {"sd_vae_mean": (4 * 32 * 32,), "sd_vae_std": (4 * 32 * 32,), "sd_vae_ok": ()}),
    ("dino-b", None, {"dino_b_cls": (768,), "dino_b_ok": ()}),
    ("clip-l", None, {"clip_l_cls": (768,), "clip_l_ok": ()}),
    ("t5-xxl", T5_SMALL, {"t5_xxl_tokens": (-1, 512), "t5_xxl_len": (), "t5_xxl_long_tokens": (-1, 512),
                          "t5_xxl_long_len": ()}),
])
def test_real_architectures_with_random_weights_through_the_same_path(name, arch, shapes):
    encoder = EncoderConfig(name, random_weights=True).build()
    if arch:
        encoder.arch = arch
    out = _run_encoder(encoder.load(), _batch())
    assert out.column_names == [cols.ID, features.SHARD, *shapes]
    for f in encoder.fields():
        column = out[f.name]
        if f.type == pa.int32():  # T5 lengths: the tokenizer's count, EOS included
            assert column.null_count == (0 if "long" not in f.name else 2)
            continue
        if f.type == pa.bool_():  # image encoders: every image of the batch encoded
            assert column.to_pylist() == [True] * len(column)
            continue
        assert f.type.value_type == pa.float16()
        for row in column.to_pylist():
            if row is None:
                continue
            values = np.asarray(row, np.float32)
            assert np.isfinite(values).all()  # the NaN check
            assert values.size % math.prod(d for d in shapes[f.name] if d > 0) == 0
    if name == "t5-xxl":
        lengths = out["t5_xxl_len"].to_pylist()
        assert [len(v) // 512 for v in out["t5_xxl_tokens"].to_pylist()] == lengths and lengths[0] < lengths[2]


def test_bf16_compute_stays_close_to_fp32():
    """Mismatched precomputed latents are a known failure (DESIGN §4): bf16 features must stay near fp32."""
    batch = _batch(2)
    for name, column in [("tiny-vae", features.mean_column("tiny-vae")), ("tiny-t5", features.tokens_column("tiny-t5"))]:
        fp32 = _run_encoder(EncoderConfig(name).build().load(), batch)[column].to_pylist()
        bf16 = _run_encoder(EncoderConfig(name, precision="bf16").build().load(), batch)[column].to_pylist()
        for a, b in zip(fp32, bf16):
            a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
            assert a.shape == b.shape and not np.array_equal(a, b)  # bf16 really ran
            assert np.abs(a - b).max() <= 0.05 * np.abs(a).max()
