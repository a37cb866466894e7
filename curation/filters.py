"""Row filters over Arrow tables. Each filter has one method that answers, per row, a drop reason or null
(keep); `apply_filters` takes the first reason per row and counts rows per reason.

Bounds are inclusive: a row exactly at a bound is kept. A NULL or NaN in a filtered column drops the row
under `<field>_missing`, never silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc


class Filter:
    def drop_reasons(self, table: pa.Table) -> pa.Array:
        """A string array as long as `table`: the reason to drop each row, or null to keep it."""
        raise NotImplementedError


def _missing(values: pa.Array) -> pa.Array:
    values = values.cast(pa.float64())
    return pc.or_kleene(pc.is_null(values), pc.is_nan(values)).fill_null(True)


def _reasons(masks: list[tuple[pa.Array, str]], length: int) -> pa.Array:
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
        return _reasons([(missing, f"{self.field}_missing"), (outside.fill_null(False), f"{self.field}_{side}")],
                        len(table))


@dataclass(frozen=True)
class MinSide(Filter):
    """Keep rows whose shorter side, min(width, height), is >= `bound` pixels."""

    width: str
    height: str
    bound: int

    def drop_reasons(self, table: pa.Table) -> pa.Array:
        w = table[self.width].combine_chunks().cast(pa.float64())
        h = table[self.height].combine_chunks().cast(pa.float64())
        missing = pc.or_(_missing(w), _missing(h))
        small = pc.less(pc.min_element_wise(w, h), self.bound).fill_null(False)
        return _reasons([(missing, "size_missing"), (small, "too_small")], len(table))


@dataclass(frozen=True)
class NonEmpty(Filter):
    """Keep rows whose string `field` is neither NULL nor empty."""

    field: str

    def drop_reasons(self, table: pa.Table) -> pa.Array:
        values = table[self.field].combine_chunks().cast(pa.string())
        empty = pc.or_kleene(pc.is_null(values), pc.equal(pc.utf8_length(values), 0)).fill_null(True)
        return _reasons([(empty, f"{self.field}_missing")], len(table))


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
