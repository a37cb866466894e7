"""Option values that cannot work (`--image-size 0`, `--max-unsafe 1.5`, ...) end a command in one line,
before it writes anything. Each check raises UserError naming the option and the value given."""

from __future__ import annotations

import math

from lumos.floor.errors import UserError


def at_least(flag: str, value: float | None, bound: float) -> None:
    """`value` >= `bound` and finite; None (the option's "not set") passes."""
    if value is not None and not (math.isfinite(value) and value >= bound):  # NaN fails every comparison
        raise UserError(f"{flag} {value}: must be a number >= {bound}")


def positive(flag: str, value: int | None) -> None:
    at_least(flag, value, 1)


def between(flag: str, value: float | None, low: float, high: float, low_open: bool = False) -> None:
    """low <= `value` <= high (low < value when `low_open`); None passes."""
    if value is None:
        return
    inside = math.isfinite(value) and (low < value if low_open else low <= value) and value <= high
    if not inside:
        raise UserError(f"{flag} {value}: must be in {'(' if low_open else '['}{low}, {high}]")
