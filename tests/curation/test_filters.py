import math

import pyarrow as pa

from lumos.curation.filters import MinSide, NonEmpty, Threshold, apply_filters


def _table():
    return pa.table(
        {
            "url": ["a", "b", None, "d", "e", "f", "g", ""],
            "width": [512, 511, 600, None, 800, 900, 1000, 700],
            "height": [700, 900, 600, 600, 512, 900, 1000, 700],
            "score": [5.0, 9.0, 9.0, 9.0, 4.999, math.nan, None, 6.0],
        }
    )


def test_bounds_are_inclusive_and_each_drop_has_its_reason():
    filters = [NonEmpty("url"), MinSide("width", "height", 512), Threshold("score", 5.0, at_least=True)]
    kept, dropped = apply_filters(_table(), filters)
    assert kept["url"].to_pylist() == ["a"]
    assert dict(dropped) == {"url_missing": 2, "too_small": 1, "size_missing": 1, "score_too_low": 1,
                             "score_missing": 2}
    assert kept.num_rows + sum(dropped.values()) == 8


def test_upper_bound_keeps_equal_and_drops_above():
    t = pa.table({"p": pa.array([0.5, 0.5001, 0.0, None], pa.float32())})
    kept, dropped = apply_filters(t, [Threshold("p", 0.5, at_least=False)])
    assert kept["p"].to_pylist() == [0.5, 0.0]
    assert dict(dropped) == {"p_too_high": 1, "p_missing": 1}


def test_first_failing_filter_names_the_reason():
    t = pa.table({"url": [None], "width": [10], "height": [10], "score": [1.0]})
    _, dropped = apply_filters(t, [NonEmpty("url"), MinSide("width", "height", 512),
                                   Threshold("score", 5.0, at_least=True)])
    assert dict(dropped) == {"url_missing": 1}
