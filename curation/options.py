"""Option values that cannot work (`--image-size 0`, `--max-unsafe 1.5`, ...) end a command in one line,
before it writes anything. Each check raises UserError naming the option and the value given."""

from __future__ import annotations

from lumos.floor.errors import UserError
from lumos.floor.options import at_least, between, positive


def web_options(min_size: int, min_aesthetic: float, max_watermark: float | None, max_unsafe: float | None,
                image_size: int, workers: int | None, threads: int, shard_size: int, timeout: int,
                commit_every: float = 1.0) -> None:
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
    at_least("--commit-every", commit_every, 0)


def dump_options(min_size: int, image_size: int, min_aesthetic: float, commit_every: float = 1.0) -> None:
    """`lumos-curate sam|journeydb|imagenet`."""
    at_least("--min-size", min_size, 0)
    positive("--image-size", image_size)
    at_least("--min-aesthetic", min_aesthetic, 0)
    at_least("--commit-every", commit_every, 0)


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

