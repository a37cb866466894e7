"""`lumos-curate compact`: lance-ray's distributed compaction on a real images table; the same rows and image
bytes in fewer fragments, old versions cleaned; a features table made before it can take no new encoder."""

import lance
import pytest
from test_mix_and_score import _read, _table

from lumos.curation.compact_job import compact_table
from lumos.curation.dump_job import ScoreConfig
from lumos.curation.score_job import score_table
from lumos.floor.errors import UserError
from lumos.pipeline.encode_job import EncoderConfig, run_encode


def test_compact_keeps_every_row_in_fewer_fragments(tmp_path, ray_session):
    path = _table(str(tmp_path / "images.lance"), "sam", [(f"k{i}", f"s{i}", i) for i in range(12)],
                  rows_per_fragment=3)
    before = _read(path)
    features = str(tmp_path / "features.lance")
    run_encode(path, features, [EncoderConfig("tiny-vae", resolution=64)], say=lambda *_: None)
    assert len(lance.dataset(path).get_fragments()) == 4

    stats = compact_table(path, rows_per_fragment=100, say=lambda *_: None)
    ds = lance.dataset(path)
    assert stats == {**stats, "rows": 12, "fragments_before": 4, "fragments_after": 1}
    assert len(ds.get_fragments()) == 1 and _read(path) == before  # ids, keys, image bytes
    assert {v["version"] for v in ds.versions()} <= {ds.version, ds.tags.get_version("lumos-before-compact")}

    with pytest.raises(UserError, match="removed or rewritten since"):  # features follow the old fragments
        run_encode(path, features, [EncoderConfig("tiny-dino", resolution=64)], say=lambda *_: None)
    fresh = str(tmp_path / "fresh.lance")  # a new features table follows the compacted one
    run_encode(path, fresh, [EncoderConfig("tiny-vae", resolution=64)], say=lambda *_: None)
    assert len(lance.dataset(fresh).get_fragments()) == 1 and lance.dataset(fresh).count_rows() == 12

    with pytest.raises(UserError, match="--rows-per-fragment 0: must be >= 1"):
        compact_table(path, rows_per_fragment=0)

    lance.dataset(path).delete("key = 'k3'")  # deleted rows: score asks for a compaction, which clears them
    with pytest.raises(UserError, match="has deleted rows; compact it first"):
        score_table(path, ScoreConfig(model="tiny"), say=lambda *_: None)
    compact_table(path, say=lambda *_: None)
    assert score_table(path, ScoreConfig(model="tiny"), say=lambda *_: None)["scored"] == 11
