"""Resolve and check metadata inputs before any job starts, so a bad input never leaves half a job."""

from __future__ import annotations

import glob
import os

import pyarrow as pa
import pyarrow.parquet as pq

from lumos.curation.errors import UserError


def resolve_parquet_files(path: str) -> list[str]:
    """A parquet file, a folder of them (searched recursively) or a glob; local or an object-store URI.

    Local paths come back absolute, so the job record is the same from whatever folder it is re-run.
    """
    if "://" in path:
        return _resolve_uri(path)
    path = os.path.abspath(path)
    if any(ch in path for ch in "*?["):
        files = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
        if not files:
            raise UserError(f"no file matches {path}")
        return files
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
        if not files:
            raise UserError(f"no .parquet file in folder {path}")
        return files
    if os.path.isfile(path):
        return [path]
    raise UserError(f"input {path} does not exist")


def _resolve_uri(uri: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri)
    info = fs.get_file_info(root)
    scheme = uri.split("://", 1)[0]
    if info.type == pafs.FileType.File:
        return [uri]
    if info.type == pafs.FileType.Directory:
        found = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        files = sorted(f"{scheme}://{f.path}" for f in found if f.is_file and f.path.endswith(".parquet"))
        if files:
            return files
        raise UserError(f"no .parquet file under {uri}")
    raise UserError(f"input {uri} does not exist")


def read_schemas(files: list[str]) -> tuple[pa.Schema, int]:
    """The schema all `files` share and their total row count; UserError for a non-parquet, empty or odd file."""
    schema, rows = None, 0
    for path in files:
        try:
            meta = pq.read_metadata(path) if "://" not in path else _read_metadata_uri(path)
        except (pa.ArrowInvalid, OSError) as err:
            raise UserError(f"{path} is not a readable parquet file ({_first_line(err)})") from None
        file_schema = meta.schema.to_arrow_schema()
        if schema is None:
            schema = file_schema
        elif set(file_schema.names) != set(schema.names):
            raise UserError(
                f"{path} has columns {', '.join(file_schema.names)}, unlike {files[0]}: {', '.join(schema.names)}"
            )
        rows += meta.num_rows
    if rows == 0:
        raise UserError(f"{'the input' if len(files) > 1 else files[0]} holds no rows")
    return schema, rows


def _read_metadata_uri(uri: str):
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    with fs.open_input_file(path) as f:
        return pq.read_metadata(f)


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
