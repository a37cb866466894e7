"""The encoders themselves, on the real libraries: the paper's token sets against the models' own attention,
the MoCo v3 checkpoint loader, T5's NaN check, a corrupt image counted by the job, and one-line refusals."""

import lance
import numpy as np
import pyarrow as pa
import pytest
import torch
from test_encode_errors import _encode
from test_encode_job import _batch, _run_encoder
from test_encode_resume import _images

from lumos.floor.errors import UserError
from lumos.pipeline.encode_job import EncoderConfig, run_encode
from lumos.pipeline.encoders.vision import TOP_K
from lumos.schemas import features


def _pixels(encoder, count=2):
    from lumos.curation.sample import synthetic_image

    return torch.from_numpy(np.stack([encoder.preprocess(synthetic_image(420, 300, seed=s)) for s in range(count)]))


def _timm_cls_attention(model, pixels):
    """Reference: the last block's own softmax (timm's unfused path), CLS row, mean over heads."""
    attn = model.blocks[-1].attn
    attn.fused_attn, seen = False, {}
    hook = attn.attn_drop.register_forward_hook(lambda _m, args, _out: seen.setdefault("a", args[0]))
    try:
        tokens = model.forward_features(pixels)
    finally:
        hook.remove()
        attn.fused_attn = True
    return tokens, seen["a"][:, :, 0, 1:].mean(1)  # (N, 1 + T, D), (N, T)


def _clip_cls_attention(visual, pixels):
    """Reference: nn.MultiheadAttention's own head-averaged weights in the last block."""
    last, seen = visual.transformer.resblocks[-1], {}
    hook = last.ln_1.register_forward_hook(lambda _m, _i, out: seen.setdefault("x", out))
    visual.output_tokens = True
    try:
        pooled, patches = visual(pixels)
    finally:
        visual.output_tokens = False
        hook.remove()
    _, weights = last.attn(seen["x"], seen["x"], seen["x"], need_weights=True, average_attn_weights=True)
    return torch.cat([pooled[:, None], patches @ visual.proj], 1), weights[:, 0, 1:]


@pytest.mark.parametrize("name, reference", [("tiny-dino", "timm"), ("tiny-clip", "clip")])
def test_token_sets_match_the_models_own_attention(name, reference):
    encoders = {t: EncoderConfig(name, tokens=t).build().load() for t in ("cls", "patch", "all", "top119")}
    x = _pixels(encoders["cls"])
    out = {t: e.forward(x) for t, e in encoders.items()}
    model = encoders["cls"].model
    tokens, attention = (_timm_cls_attention if reference == "timm" else _clip_cls_attention)(model, x)
    tokens, dim = tokens.half().numpy(), tokens.shape[-1]
    cls, tok = features.cls_column(name), features.tokens_column(name)
    close = lambda a, b: np.allclose(a, b, atol=2e-3, rtol=2e-3)  # noqa: E731 - fused vs unfused attention
    for t in out:
        assert close(out[t][cls], tokens[:, 0])
    assert tok not in out["cls"]
    assert close(out["patch"][tok].reshape(2, -1, dim), tokens[:, 1:])
    assert close(out["all"][tok].reshape(2, -1, dim), tokens)
    top = out["top119"][tok].reshape(2, 1 + TOP_K, dim)
    for i in range(2):
        chosen = np.sort(np.argsort(-attention[i].numpy(), kind="stable")[:TOP_K]) + 1
        assert close(top[i], tokens[i, np.concatenate([[0], chosen])])
        assert not close(top[i], tokens[i, :1 + TOP_K])  # the choice is not simply the first patches
    assert [f.name for f in encoders["top119"].fields()] == [cls, tok, features.ok_column(name)]
    assert features.shape_of(encoders["top119"].fields()[1]) == (1 + TOP_K, dim)


def test_mocov3_loads_the_released_checkpoint_layout(tmp_path):
    import timm

    torch.manual_seed(1)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).eval()
    state = {f"module.base_encoder.{k}": v for k, v in vit.state_dict().items()}
    state["module.predictor.0.weight"] = torch.zeros(4, 4)  # the released file also holds the predictor
    path = tmp_path / "vit-b-300ep.pth.tar"
    torch.save({"epoch": 300, "arch": "vit_base", "state_dict": state}, path)

    encoder = EncoderConfig("mocov3-b", weights=str(path)).build().load()
    x = _pixels(encoder, 1)
    with torch.no_grad():
        want = vit.forward_features(x)[:, 0].half().numpy()
    assert np.array_equal(encoder.forward(x)[features.cls_column("mocov3-b")], want)
    assert encoder.provenance()["weights"].startswith("mocov3 vit-b-300ep sha256:")

    with pytest.raises(UserError, match="mocov3-b has no hub copy: download .* and pass --weights PATH"):
        EncoderConfig("mocov3-b").build().check()
    torch.save({"state_dict": {"module.base_encoder.foo": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="is not a MoCo v3 ViT-B/16 checkpoint"):
        EncoderConfig("mocov3-b", weights=str(tmp_path / "other.pth")).build().check()


def test_t5_rows_that_are_not_finite_are_nulled_and_counted(tmp_path):
    encoder = EncoderConfig("tiny-t5").build().load()
    with torch.no_grad():
        encoder.model.encoder.final_layer_norm.weight[0] = float("nan")
    out = _run_encoder(encoder, _batch(3))
    assert out[features.tokens_column("tiny-t5")].null_count == 3  # never stored
    assert out[features.len_column("tiny-t5")].to_pylist() == [0, 0, 0]  # 0: not finite (null: no caption)
    assert out[features.long_len_column("tiny-t5")].to_pylist() == [0, None, None]
    table = out.select([features.len_column("tiny-t5"), features.long_len_column("tiny-t5")])
    ds = lance.write_dataset(table, str(tmp_path / "t.lance"))  # the job counts reasons with these filters
    counts = {}
    for reason, where in encoder.tally():
        counts[reason] = counts.get(reason, 0) + ds.count_rows(filter=where)
    assert counts == {"no_caption": 0, "no_long_caption": 2, "not_finite": 4}


def test_an_image_that_does_not_decode_is_counted_not_fatal(tmp_path, ray_session):
    images = _images(str(tmp_path / "images.lance"), count=8, corrupt={3})
    out = str(tmp_path / "f.lance")
    stats = run_encode(images, out, [EncoderConfig("tiny-dino")], say=lambda *_: None)
    assert stats["encoders"]["tiny-dino"]["failed_to_decode"] == 1

    table = lance.dataset(out).to_table().sort_by("id")
    assert table.num_rows == 8  # one row per image id; the broken one holds nulls
    assert [v is None for v in table[features.cls_column("tiny-dino")].to_pylist()] == [i == 3 for i in range(8)]
    assert table[features.ok_column("tiny-dino")].to_pylist() == [i != 3 for i in range(8)]


def test_missing_t5_weights_name_them_in_one_line(tmp_path):
    images = _images(str(tmp_path / "images.lance"), count=2)
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code, lines = _encode("--encoder", "t5-xxl", "--input", images, "--output", str(tmp_path / "f"), env=env)
    assert code == 2 and len(lines) == 1, lines
    assert "cannot load the weights of the text encoder t5-xxl (google/flan-t5-xxl)" in lines[0]
    code, lines = _encode("--encoder", "tiny-dino", "--tokens", "some", "--input", images, "--output",
                          str(tmp_path / "f"))
    assert code == 2 and len(lines) == 1 and "--tokens some: expected one of cls, patch, all, top119" in lines[0]
    assert not (tmp_path / "f").exists()


def test_token_lists_keep_nulls_and_lengths():
    from lumos.pipeline.encoders.t5 import token_lists

    rows = [np.ones((2, 3), np.float16), None, np.zeros((1, 3), np.float16)]
    column = token_lists(rows, 3)
    assert column.type == pa.large_list(pa.float16())  # 64-bit offsets
    assert column.to_pylist() == [[1.0] * 6, None, [0.0] * 3]


def test_a_t5_token_column_past_2_31_values_in_one_fragment(tmp_path):
    """The offset, not the width, overflows 32-bit lists: 2^31 + 2^20 fp16 values at width 2 (T5-XXL's 4096
    reaches it at ~4.4k captions of 120 tokens) go into one large_list column and one Lance fragment, written
    in batches as the encode job's finalize writes, and read back whole at both ends."""
    from lance.fragment import write_fragments

    from lumos.floor.column_writer import WRITE_ROWS
    from lumos.pipeline.encoders.t5 import token_lists

    dim, tokens = 2, 2 ** 19  # 2^20 values a row
    count = 2 ** 31 // (dim * tokens) + 1
    rows = [np.broadcast_to(np.float16(i % 1000), (tokens, dim)) for i in range(count)]  # no memory a row
    column = token_lists(rows, dim)
    assert len(column.values) == 2 ** 31 + 2 ** 20 and column.offsets.type == pa.int64()
    schema = pa.schema([features.token_list_field("t5_tokens", dim)])
    table = pa.table({"t5_tokens": column}, schema=schema)
    del column
    batches = pa.RecordBatchReader.from_batches(schema, table.to_batches(max_chunksize=WRITE_ROWS))
    written = write_fragments(batches, str(tmp_path / "t.lance"), schema=schema, max_rows_per_file=count + 1,
                              data_storage_version=features.STORAGE_VERSION)
    del table, batches
    assert len(written) == 1 and written[0].physical_rows == count
    ds = lance.LanceDataset.commit(str(tmp_path / "t.lance"), lance.LanceOperation.Overwrite(schema, written))
    for i in (0, count - 2, count - 1):  # the last row's values start past 2^31
        values = ds.take([i], columns=["t5_tokens"])["t5_tokens"][0].values.to_numpy()
        assert values.shape == (tokens * dim,) and (values == i % 1000).all()
