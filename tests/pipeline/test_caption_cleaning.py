"""Caption cleaning as official Lumos (issue 16, item 4): `lumos-encode --clean-captions official|none`, official
by default for T5 encoders, recorded in the provenance, applied to captions and long captions by the encode
job and to prompts by the sampler (rebuilt from the provenance), with the real libraries (diffusers' rules,
beautifulsoup4, ftfy, ByT5 tokens of tiny-t5); a T2I run started from a model trained on cleaned captions (as a
converted official one is) refuses uncleaned ones."""

import json
import sys

import lance
import numpy as np
import pyarrow as pa
import pytest

from lumos.floor.errors import UserError
from lumos.generation.run_encoders import TextCondition
from lumos.pipeline.encode_job import EncoderConfig, run_encode, stats_file
from lumos.pipeline.encoders.captions import cleaner
from lumos.schemas import features
from lumos.schemas import images as cols
from lumos.trainer.train import TrainConfig, run_training

# (caption, what official Lumos' T5Embedder tokenises), written out by hand from PixArt-α / DeepFloyd's rules
CASES = [
    ("A photo of a <b>Cat</b> at https://x.com/a.jpg &amp; friends @user", "a photo of a cat at friends"),
    ("  \"Sunset over the sea\"  ", "sunset over the sea"),
    ("Hello World!!!", "hello world!!!"),
    ("Buy now 1920x1080 free shipping", "buy now"),
    ("IMG_1234.jpg", ""),  # a file name is nothing: the row has no caption
    ("Caf%C3%A9 in Paris", "café in paris"),  # URL escapes un-quoted
]


def test_official_cleaning_gives_the_official_text():
    clean = cleaner("official")
    assert [clean(raw) for raw, _ in CASES] == [want for _, want in CASES]
    assert [cleaner("none")(raw) for raw, _ in CASES] == [raw for raw, _ in CASES]
    with pytest.raises(UserError, match="--clean-captions lower: expected one of official, none"):
        cleaner("lower")


def test_missing_libraries_fail_in_one_line_not_silently(monkeypatch):
    monkeypatch.setitem(sys.modules, "bs4", None)  # import bs4 now raises ImportError
    with pytest.raises(UserError) as refused:
        EncoderConfig("tiny-t5").build()
    assert str(refused.value) == ("--clean-captions official needs beautifulsoup4 (pip install beautifulsoup4), "
                                  "or pass --clean-captions none")
    assert EncoderConfig("tiny-t5", clean_captions="none").build().clean("A B") == "A B"


def _images(path, captions, long_captions):
    from lumos.curation.sample import encode, synthetic_image

    rows = [{cols.ID: f"id{i:03d}", cols.SOURCE: "test", cols.KEY: f"k{i}", cols.ORIGINAL_WIDTH: 64,
             cols.ORIGINAL_HEIGHT: 64, cols.WIDTH: 64, cols.HEIGHT: 64, cols.SHA256: f"s{i}", cols.CAPTION: c,
             cols.LONG_CAPTION: lc, cols.IMAGE: encode(synthetic_image(64, 64, seed=i))}
            for i, (c, lc) in enumerate(zip(captions, long_captions))]
    schema = cols.images_schema({"job": {"source": "test"}}, unique_ids=True)
    lance.write_dataset(pa.Table.from_pylist(rows, schema=schema), path, schema=schema, max_rows_per_file=3)
    return path


def _stored(path, name):
    t = lance.dataset(path).to_table(columns=[cols.ID, features.len_column(name), features.long_len_column(name),
                                              features.tokens_column(name)]).sort_by(cols.ID)
    return t


def test_encode_job_cleans_captions_and_long_captions_and_records_it(tmp_path, ray_session):
    captions = [raw for raw, _ in CASES]
    longs = [None, "See <a href='http://spam.net'>HERE</a> A Long Caption", None, None, None, None]
    images = _images(str(tmp_path / "images.lance"), captions, longs)
    say = lambda *_: None  # noqa: E731

    official, plain = str(tmp_path / "official.lance"), str(tmp_path / "none.lance")
    latents = EncoderConfig("tiny-vae", resolution=64)  # for the training runs at the end
    run_encode(images, official, [EncoderConfig("tiny-t5"), latents], batch_size=4, say=say)
    run_encode(images, plain, [EncoderConfig("tiny-t5", clean_captions="none"), latents], batch_size=4, say=say)
    got, raw = _stored(official, "tiny-t5"), _stored(plain, "tiny-t5")
    length, long_length = features.len_column("tiny-t5"), features.long_len_column("tiny-t5")
    # tiny-t5's tokens are the caption's UTF-8 bytes plus EOS: the stored length says which text was encoded
    assert got[length].to_pylist() == [len(want.encode()) + 1 if want else None for _, want in CASES]
    assert raw[length].to_pylist() == [len(c.encode()) + 1 for c in captions]
    assert got[long_length].to_pylist()[1] == len("see here a long caption".encode()) + 1
    # the cleaned caption's tokens are those of the text written out by hand
    encoder = EncoderConfig("tiny-t5", clean_captions="none").build().load()
    want = encoder.encode_texts([CASES[0][1]])[0]
    stored = np.asarray(got[features.tokens_column("tiny-t5")][0].as_py(), np.float16).reshape(want.shape)
    assert np.allclose(stored.astype(np.float32), want.astype(np.float32), atol=1e-3)

    def record(path):
        meta = lance.dataset(path).schema.metadata
        return json.loads(meta[(features.META_ENCODER + "tiny-t5").encode()])

    assert record(official)["clean_captions"] == "official" and "clean_captions" not in record(plain)
    with open(stats_file(official)) as f:
        assert json.load(f)["tiny-t5"]["no_caption"] == 1  # "IMG_1234.jpg" cleaned to nothing

    with pytest.raises(UserError) as refused:  # the other mode into the same table: one line, nothing written
        run_encode(images, plain, [EncoderConfig("tiny-t5")], say=say)
    assert "\n" not in str(refused.value)
    assert "clean_captions: None then, 'official' now" in str(refused.value)

    # lumos-sample rebuilds the text encoder from the provenance, and cleans prompts as the features were made
    condition = TextCondition(record(official))
    tokens, mask = condition(["A photo of a <b>Cat</b> at https://x.com/a.jpg &amp; friends @user"])
    assert int(mask.sum()) == len(CASES[0][1].encode()) + 1
    assert np.allclose(tokens[0, :int(mask.sum())].numpy(), want.astype(np.float32), atol=1e-3)
    with pytest.raises(UserError, match="a prompt is empty after caption cleaning"):
        condition(["IMG_1234.jpg"])
    uncleaned_tokens, uncleaned_mask = TextCondition(record(plain))(["A Cat"])
    assert int(uncleaned_mask.sum()) == len("A Cat".encode()) + 1

    # a run trained on cleaned captions, fine-tuned (--init) on uncleaned ones: refused in one line
    run = dict(mode="t2i", model="DiT-T/2", arch="lumos", latents="tiny-vae-64", text="tiny-t5", precision="fp32",
               batch_size=2, steps=1, workers=0, warmup=1)
    run_training(TrainConfig.of(data=official, output=str(tmp_path / "cleaned"), **run), say=say)
    with pytest.raises(UserError) as refused:
        run_training(TrainConfig.of(data=plain, output=str(tmp_path / "tuned"), init=str(tmp_path / "cleaned"),
                                    **run), say=say)
    assert "\n" not in str(refused.value)
    assert "was trained on other tiny-t5 features than --data (differs in: clean_captions: 'official' then, None now)" \
        in str(refused.value)
