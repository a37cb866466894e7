"""The web path's decode (web_decode.py) in img2dataset's terms: the stand-in Downloader takes our resizer,
built from the arguments img2dataset hands it, and every refusal maps back to its reason in ingest."""

import io
import pickle

from PIL import Image
from web_cases import routes

from lumos.curation.download import DownloadConfig, downloader_class
from lumos.curation.ingest import IngestConfig, classify
from lumos.curation.prepare import PrepareConfig, prepare
from lumos.curation.url_guard import GuardedDownloader
from lumos.curation.web_decode import DECODE_MARKER, LumosDownloader, PreparedResizer, decode_reason
from lumos.schemas import web


def _downloader(cls, **resizer_args):
    """`cls` built exactly as img2dataset.main builds its Downloader (keyword arguments, a real Resizer)."""
    from img2dataset.resizer import Resizer
    from img2dataset.writer import ParquetSampleWriter

    resizer = Resizer(resize_mode="keep_ratio", resize_only_if_bigger=True, encode_quality=95, encode_format="jpg",
                      min_image_size=0, **resizer_args)
    return cls(sample_writer_class=ParquetSampleWriter, resizer=resizer, thread_count=2, save_caption=True,
               extract_exif=False, output_folder="/nonexistent", column_list=["url"], timeout=5,
               number_sample_per_shard=8, oom_shard_count=5, compute_hash="sha256", verify_hash_type=None,
               encode_format="jpg", retries=0, user_agent_token=None, disallowed_header_directives=None)


def test_the_stand_in_takes_our_resizer_from_img2datasets_arguments():
    assert downloader_class(DownloadConfig(allow_private_urls=True)) is LumosDownloader
    assert downloader_class(DownloadConfig()) is GuardedDownloader  # the guard on by default
    assert issubclass(GuardedDownloader, LumosDownloader)  # guarded or not, our decode
    for cls in (LumosDownloader, GuardedDownloader):
        d = _downloader(cls, image_size=384, max_image_area=1_000_000)
        assert d.downloader.resizer.config == PrepareConfig(min_size=0, image_size=384, max_pixels=1_000_000)
        # what the spawn / Ray workers receive: pickled by reference, our resizer kept
        again = pickle.loads(pickle.dumps(d))
        assert type(again) is cls and again.downloader.resizer.config == d.downloader.resizer.config
    # img2dataset's default area is no cap: ours keeps the dumps' cap
    assert _downloader(LumosDownloader, image_size=512).downloader.resizer.config.max_pixels == 100_000_000


def test_the_resizer_returns_prepares_jpeg_and_sizes():
    body = routes()["/exif_rotated"].body
    img, w, h, ow, oh, err = PreparedResizer(image_size=512, max_pixels=10**8)(io.BytesIO(body), None)
    assert (w, h, ow, oh, err) == (512, 683, 600, 800, None)  # upright: a portrait
    assert img == prepare(body, PrepareConfig(min_size=0)).image  # the very bytes the dumps would store
    assert Image.open(io.BytesIO(img)).mode == "RGB"
    small = routes()["/shrunk"].body  # 400×300: min_size is ingest's check, not the resizer's
    assert PreparedResizer(512, 10**8)(io.BytesIO(small))[1:] == (400, 300, 400, 300, None)


class _Broken(io.BytesIO):
    def read(self, *_):
        raise OSError("connection reset while reading")


def test_every_refusal_is_a_marked_reason_that_ingest_counts():
    r = routes()
    resize = PreparedResizer(image_size=512, max_pixels=2_000_000)
    cases = {"/huge": "too_large", "/too_wide": "extreme_aspect", "/html": "failed_to_decode",
             "/truncated": "failed_to_decode", "/empty": "failed_to_decode"}
    config = IngestConfig(source="laion", min_size=512)
    for path, reason in cases.items():
        out = resize(io.BytesIO(r[path].body))
        assert out[:5] == (None,) * 5 and out[5] == f"{DECODE_MARKER} {reason}", path
        row = {web.I2D_STATUS: "failed_to_resize", web.I2D_ERROR: out[5]}  # as img2dataset records it
        assert classify(row, config) == reason
    assert resize(_Broken()) == (None,) * 5 + (f"{DECODE_MARKER} failed_to_decode",)  # never raises
    # img2dataset's own messages are not ours: they keep img2dataset's status
    assert decode_reason("image area too large") is None
    assert classify({web.I2D_STATUS: "failed_to_resize", web.I2D_ERROR: "image area too large"}, config) \
        == "failed_to_resize"
