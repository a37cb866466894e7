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


def test_sizes_must_be_whole_positive_pixel_counts():
    from lumos.curation.filters import MAX_SIDE, drop_reasons

    t = pa.table({"w": [800.0, 800.5, 0.0, -1.0, math.inf, math.nan, 1e12, MAX_SIDE, 600.0, 511.0],
                  "h": [600.0, 600.0, 600.0, 600.0, 600.0, 600.0, 1e12, 600.0, 599.25, 900.0]})
    assert drop_reasons(t, [MinSide("w", "h", 512)]).to_pylist() == [
        None, "size_not_integer", "size_missing", "size_missing", "size_missing", "size_missing", "too_large",
        None, "size_not_integer", "too_small"]
    ints = pa.table({"w": pa.array([0, 512, -3], pa.int32()), "h": pa.array([600, 512, 600], pa.uint64())})
    assert drop_reasons(ints, [MinSide("w", "h", 0)]).to_pylist() == ["size_missing", None, "size_missing"]


def test_infinite_scores_carry_no_number():
    t = pa.table({"s": [math.inf, -math.inf, 6.0]})
    kept, dropped = apply_filters(t, [Threshold("s", 5.0, at_least=True)])
    assert kept["s"].to_pylist() == [6.0] and dict(dropped) == {"s_missing": 2}


def _raw_strings(values, type_=pa.string()):
    """A string array holding exactly these bytes, valid UTF-8 or not (what a Parquet reader hands over)."""
    offsets, data = [0], b""
    for v in values:
        data += v or b""
        offsets.append(len(data))
    validity = pa.array([v is not None for v in values]).buffers()[1]
    return pa.Array.from_buffers(type_, len(values), [validity, pa.array(offsets, pa.int32()).buffers()[1],
                                                      pa.py_buffer(data)])


def test_text_that_is_not_utf8_is_found_row_by_row_and_made_null():
    from lumos.curation.filters import as_utf8

    values = [b"ok", b"\xff\xfe", None, "café".encode(), "é".encode()[:1], b""]
    for array in (_raw_strings(values), pa.array(values, pa.binary()), pa.array(values, pa.large_binary())):
        text, bad = as_utf8(array)
        assert text.type == pa.string()
        assert text.to_pylist() == ["ok", None, None, "café", None, ""]
        assert bad.to_pylist() == [False, True, False, False, True, False]
    text, bad = as_utf8(pa.array(["a", None], pa.large_string()))  # all valid: the C-speed path
    assert text.type == pa.string() and text.to_pylist() == ["a", None] and bad.to_pylist() == [False, False]
    text, bad = as_utf8(pa.nulls(2))
    assert text.to_pylist() == [None, None] and bad.to_pylist() == [False, False]
