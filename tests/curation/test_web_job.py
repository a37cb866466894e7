"""End to end through real Ray, img2dataset and Lance: `lumos-curate laion|coyo` on every edge case."""

import hashlib
import io
import json
import os
from collections import Counter

import lance
import pytest
from PIL import Image
from web_cases import CASES, MAX_PIXELS, VARIANTS, case_url, routes, write_metadata

from lumos.curation.download import DownloadConfig
from lumos.curation.web_job import WebJob, run_web_job
from lumos.schemas import images as cols


def _run(tmp_path, variant, base_url, **kw):
    source = VARIANTS[variant][0]
    # COYO ships as a folder of parquet files: give it two, so the several-file path of Ray is covered.
    metadata = str(tmp_path / "meta")
    os.makedirs(metadata, exist_ok=True)
    halves = [CASES] if source == "laion" else [CASES[: len(CASES) // 2], CASES[len(CASES) // 2 :]]
    for i, cases in enumerate(halves):
        write_metadata(os.path.join(metadata, f"{variant}-{i}.parquet"), variant, base_url, cases)
    job = WebJob(source=source, input=metadata, output=str(tmp_path / "out"),
                 download_config=DownloadConfig(workers=1, threads=8, shard_size=8, max_pixels=MAX_PIXELS,
                                                allow_private_urls=True),  # the test server is on 127.0.0.1
                 **kw)
    return job, run_web_job(job, say=lambda *_: None)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_web_job_keeps_exactly_the_good_rows(tmp_path, ray_session, served, variant):
    job, stats = _run(tmp_path, variant, served.base_url)
    source = VARIANTS[variant][0]
    expected_kept = {case_url(served.base_url, c) for c in CASES if c.expect is None}
    expected_dropped = Counter(c.expect for c in CASES if c.expect is not None)

    assert stats["rows"] == len(CASES)
    assert stats["kept"] == len(expected_kept)
    assert stats["dropped"] == dict(expected_dropped)
    assert stats["rows"] == stats["kept"] + sum(stats["dropped"].values())
    with open(tmp_path / "out" / "stats.json") as f:
        assert json.load(f) == stats

    ds = lance.dataset(str(tmp_path / "out" / "images.lance"))
    cols.validate(ds.schema)
    table = ds.to_table(columns=[c for c in cols.IMAGES_SCHEMA.names if c != cols.IMAGE])
    rows = table.to_pylist()
    assert {r[cols.KEY] for r in rows} == expected_kept
    assert len({r[cols.ID] for r in rows}) == len(rows)
    served_bytes = routes()
    by_url = {case_url(served.base_url, c): c for c in CASES if c.expect is None}
    blobs = ds.take_blobs(cols.IMAGE, indices=list(range(len(rows))))
    for row, blob in zip(rows, blobs):
        case = by_url[row[cols.KEY]]
        assert row[cols.ID] == cols.make_id(source, row[cols.URL])
        assert row[cols.SOURCE] == source
        assert row[cols.CAPTION] == case.caption
        assert row[cols.AESTHETIC] == pytest.approx(case.aesthetic)
        # the hash is of the bytes the server sent, before any resize
        assert row[cols.SHA256] == hashlib.sha256(served_bytes[f"/{case.name}"].body).hexdigest()
        im = Image.open(io.BytesIO(blob.read()))
        assert im.mode == "RGB", case.name
        assert min(im.size) == 512, (case.name, im.size)
        assert im.size == (row[cols.WIDTH], row[cols.HEIGHT])
        ow, oh = row[cols.ORIGINAL_WIDTH], row[cols.ORIGINAL_HEIGHT]
        assert abs(im.size[0] / im.size[1] - ow / oh) < 0.01  # aspect kept: no crop, no padding
        # decoded as the dumps are (prepare.py): EXIF orientation applied, 16-bit/float scaled, alpha on white
        if case.stored is not None:
            assert (im.size, (ow, oh)) == (case.stored, case.original), case.name
        for (fx, fy), rgb in case.pixels:
            got = im.convert("RGB").getpixel((int(fx * im.width), int(fy * im.height)))
            assert max(abs(g - e) for g, e in zip(got, rgb)) <= 4, (case.name, (fx, fy), got, rgb)
    assert job.download_config.image_size == 512

    # a finished job run again is a no-op: same stats, no new table version
    version = ds.version
    _, again = _run(tmp_path, variant, served.base_url)
    assert again == stats
    assert lance.dataset(str(tmp_path / "out" / "images.lance")).version == version
