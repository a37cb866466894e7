import pytest

from lumos.schemas import web


def test_detects_each_laion_variant_and_coyo():
    upper = web.detect("laion", ["URL", "TEXT", "WIDTH", "HEIGHT", "similarity", "punsafe", "pwatermark",
                                 "AESTHETIC_SCORE", "hash"])
    assert upper.physical[web.AESTHETIC] == "AESTHETIC_SCORE" and upper.variant == "upper-case"
    plain = web.detect("laion", ["URL", "TEXT", "WIDTH", "HEIGHT", "similarity"])
    assert not plain.has(web.AESTHETIC) and not plain.has(web.WATERMARK)
    lower = web.detect("laion", ["url", "text", "width", "height", "aesthetic", "pwatermark", "punsafe"])
    assert lower.physical[web.URL] == "url" and lower.variant == "lower-case"
    coyo = web.detect("coyo", ["id", "url", "text", "width", "height", "aesthetic_score_laion_v2",
                               "watermark_score", "nsfw_score_opennsfw2"])
    assert coyo.physical[web.UNSAFE] == "nsfw_score_opennsfw2"


def test_missing_required_column_names_it_and_the_columns_present():
    with pytest.raises(web.MissingColumn) as err:
        web.detect("coyo", ["id", "url", "text", "height"])
    assert "no width column" in str(err.value) and "id, url, text, height" in str(err.value)
