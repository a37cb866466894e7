"""Row filters over Arrow tables. Each filter has one method that answers, per row, a drop reason or null
(keep); `apply_filters` takes the first reason per row and counts rows per reason.

Bounds are inclusive: a row exactly at a bound is kept. A value that carries no number (NULL, NaN, ±inf) in
a filtered column drops the row under `<field>_missing`, never silently. Sizes must be whole, positive pixel
counts: NULL, NaN, ±inf, zero or negative is `size_missing`, a fraction (800.5) `size_not_integer`, a side
past MAX_SIDE `too_large`. Text that is not valid UTF-8 is found by `as_utf8` (the caller names the reason).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

MAX_SIDE = 2**31 - 1  # no decoder opens a wider image; a bigger "size" is not one (and would not fit int64 casts)


class Filter:
    def drop_reasons(self, table: pa.Table) -> pa.Array:
        """A string array as long as `table`: the reason to drop each row, or null to keep it."""
        raise NotImplementedError


def _missing(values: pa.Array) -> pa.Array:
    """True where a value carries no number: NULL, NaN or ±inf (a score of +inf is not a score)."""
    return pc.invert(pc.is_finite(values.cast(pa.float64()))).fill_null(True)


def as_utf8(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(`values` as a `string` array with each value that is not valid UTF-8 made NULL; the mask of those).

    Takes string or binary arrays: Parquet readers do not check UTF-8, so a `string` column can hold bad
    bytes too. The whole array is checked at C speed first; only an array holding a bad value is walked row
    by row, to find which."""
    large = pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type)
    raw, text = (pa.large_binary(), pa.large_string()) if large else (pa.binary(), pa.string())
    raw = values.cast(raw)
    try:
        return raw.cast(text).cast(pa.string()), pa.repeat(pa.scalar(False), len(values))
    except pa.ArrowInvalid:  # the cast checks UTF-8
        pass
    bad = pa.array([v is not None and not _is_utf8(v) for v in raw.to_pylist()], pa.bool_())
    return pc.if_else(bad, pa.scalar(None, raw.type), raw).cast(text).cast(pa.string()), bad


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _no_size(side: pa.Array) -> pa.Array:
    """True where a side is no pixel count at all: NULL, NaN, ±inf, or <= 0 (crawlers write 0 or -1 for
    "unknown")."""
    return pc.or_(_missing(side), pc.less_equal(side, 0).fill_null(True))


def _fraction(side: pa.Array) -> pa.Array:
    return pc.not_equal(pc.floor(side), side).fill_null(False)


def first_reason(masks: list[tuple[pa.Array, str]], length: int) -> pa.Array:
    """First matching reason for each row (masks are checked in order), null where none matches."""
    out = pa.nulls(length, pa.string())
    for mask, reason in reversed(masks):
        out = pc.if_else(mask, pa.scalar(reason, pa.string()), out)
    return out


@dataclass(frozen=True)
class Threshold(Filter):
    """Keep rows whose `field` is >= `bound` (at_least) or <= `bound` (at most)."""

    field: str
    bound: float
    at_least: bool

    def drop_reasons(self, table: pa.Table) -> pa.Array:
        values = table[self.field].combine_chunks().cast(pa.float64())
        missing = _missing(values)
        outside = pc.less(values, self.bound) if self.at_least else pc.greater(values, self.bound)
        side = "too_low" if self.at_least else "too_high"
        return first_reason([(missing, f"{self.field}_missing"),
                             (outside.fill_null(False), f"{self.field}_{side}")], len(table))


@dataclass(frozen=True)
class MinSide(Filter):
    """Keep rows whose shorter side, min(width, height), is >= `bound` pixels; both sides must be whole,
    positive numbers of pixels (see the module's docstring for the reasons)."""

    width: str
    height: str
    bound: int

    def drop_reasons(self, table: pa.Table) -> pa.Array:
        w = table[self.width].combine_chunks().cast(pa.float64())
        h = table[self.height].combine_chunks().cast(pa.float64())
        missing = pc.or_(_no_size(w), _no_size(h))
        not_integer = pc.or_(_fraction(w), _fraction(h))  # 800.5 pixels: the row's metadata cannot be trusted
        huge = pc.greater(pc.max_element_wise(w, h), MAX_SIDE).fill_null(False)
        small = pc.less(pc.min_element_wise(w, h), self.bound).fill_null(False)
        return first_reason([(missing, "size_missing"), (not_integer, "size_not_integer"), (huge, "too_large"),
                             (small, "too_small")], len(table))


@dataclass(frozen=True)
class NonEmpty(Filter):
    """Keep rows whose string `field` is neither NULL nor empty."""

    field: str

    def drop_reasons(self, table: pa.Table) -> pa.Array:
        values = table[self.field].combine_chunks().cast(pa.string())
        empty = pc.or_kleene(pc.is_null(values), pc.equal(pc.utf8_length(values), 0)).fill_null(True)
        return first_reason([(empty, f"{self.field}_missing")], len(table))


def drop_reasons(table: pa.Table, filters: list[Filter]) -> pa.Array:
    """The first filter's reason for each row, in filter order; null for rows every filter keeps."""
    reasons = pa.nulls(len(table), pa.string())
    for f in filters:
        reasons = pc.coalesce(reasons, f.drop_reasons(table))
    return reasons


def count_reasons(reasons: pa.Array) -> Counter:
    counts = Counter()
    for item in pc.value_counts(reasons.drop_null()).to_pylist():
        counts[item["values"]] += item["counts"]
    return counts


def apply_filters(table: pa.Table, filters: list[Filter]) -> tuple[pa.Table, Counter]:
    """(kept rows, {reason: dropped rows})."""
    reasons = drop_reasons(table, filters)
    return table.filter(pc.is_null(reasons)), count_reasons(reasons)
