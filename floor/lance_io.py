"""Lance and JSON helpers every part shares: does a table exist, open an images table, write a file atomically."""

from __future__ import annotations

import json
import os

from lumos.floor.errors import UserError
from lumos.schemas import images as cols


def table_exists(uri: str) -> bool:
    import lance

    if "://" not in uri and not os.path.exists(uri):
        return False
    try:
        lance.dataset(uri)
    except (ValueError, OSError):
        return False
    return True


def open_images_table(uri: str, what: str = "input"):
    """The Lance images table at `uri`; UserError when there is none or its schema is not ours."""
    import lance

    if not table_exists(uri):
        raise UserError(f"{what} {uri} is not a Lance table")
    ds = lance.dataset(uri)
    try:
        cols.validate(ds.schema)
    except cols.SchemaError as err:
        raise UserError(f"{what} {uri}: {err}") from None
    return ds


def write_json(path: str, obj: dict) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
