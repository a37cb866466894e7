"""Option values that cannot work (`--image-size 0`, `--max-unsafe 1.5`, ...) end a command in one line,
before it writes anything. Each check raises UserError naming the option and the value given."""

from __future__ import annotations

import math

from lumos.curation.errors import UserError


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


def web_options(min_size: int, min_aesthetic: float, max_watermark: float | None, max_unsafe: float | None,
                image_size: int, workers: int | None, threads: int, shard_size: int, timeout: int) -> None:
    """`lumos-curate laion|coyo`."""
    at_least("--min-size", min_size, 0)
    at_least("--min-aesthetic", min_aesthetic, 0)  # 0: no aesthetic filter
    between("--max-watermark", max_watermark, 0, 1)  # probabilities
    between("--max-unsafe", max_unsafe, 0, 1)
    positive("--image-size", image_size)
    positive("--workers", workers)
    positive("--threads", threads)
    positive("--shard-size", shard_size)
    positive("--timeout", timeout)


def dump_options(min_size: int, image_size: int, min_aesthetic: float) -> None:
    """`lumos-curate sam|journeydb|imagenet`."""
    at_least("--min-size", min_size, 0)
    positive("--image-size", image_size)
    at_least("--min-aesthetic", min_aesthetic, 0)


def take_option(items: list[str]) -> dict[str, int]:
    """`lumos-curate mix --take SOURCE=N` (repeatable) as {source: N}; N >= 0, each source once."""
    caps: dict[str, int] = {}
    for item in items:
        name, _, count = item.partition("=")
        if not name or not count.isdigit():  # isdigit: no sign, no fraction
            raise UserError(f"--take {item}: expected SOURCE=N with N a whole number >= 0, e.g. laion=120000000")
        if name in caps:
            raise UserError(f"--take {item}: {name} is given twice")
        caps[name] = int(count)
    return caps


def encode_options(resolution: int, batch_size: int, gpus_per_actor: float) -> None:
    """`lumos-encode`."""
    positive("--resolution", resolution)
    if resolution % 8:
        raise UserError(f"--resolution {resolution}: must be a multiple of 8 (the VAE downsamples by 8)")
    positive("--batch-size", batch_size)
    between("--gpus-per-actor", gpus_per_actor, 0, 8, low_open=True)
