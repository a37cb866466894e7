"""Lance and JSON helpers every part shares: does a table exist, open an images table, keep and clean
versions (JSON side files: floor/fs.py)."""

from __future__ import annotations

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


def keep_version(uri: str, tag: str) -> None:
    """Tag the table's latest version `tag` (moving the tag if it exists): `clean_versions` keeps it, for a
    reader (a trainer, an encode) that started on it before a job rewrites the table."""
    import lance

    ds = lance.dataset(uri)
    if tag in ds.tags.list():
        ds.tags.update(tag, ds.version)
    else:
        ds.tags.create(tag, ds.version)


def clean_versions(uri: str, unverified: bool = False):
    """Remove every version but the latest and the tagged ones; with `unverified`, also the data files no
    version refers to (what a killed job wrote and never committed: only for the lock holder)."""
    import datetime

    import lance

    return lance.dataset(uri).cleanup_old_versions(older_than=datetime.timedelta(0), delete_unverified=unverified,
                                                   error_if_tagged_old_versions=False)
