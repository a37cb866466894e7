"""Resolve and check metadata inputs before any job starts, so a bad input never leaves half a job."""

from __future__ import annotations

import glob
import os
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from lumos.floor.errors import UserError
from lumos.schemas import web


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
    """The schema all `files` share and their total row count; UserError for a non-parquet, empty or odd file
    (a column name twice in one file included: no reader can tell which one is meant)."""
    schema, rows = None, 0
    for path in files:
        meta = _read_metadata(path)
        file_schema = meta.schema.to_arrow_schema()
        repeated = [name for name, n in Counter(file_schema.names).items() if n > 1]
        if repeated:
            raise UserError(f"{path}: column {repeated[0]} appears {file_schema.names.count(repeated[0])} times; "
                            f"each column name must be unique")
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


# The types the filter can read in each field (web.py's logical names), dictionary-encoded or not. A column
# of type null (every value missing, as pandas writes an all-None column) fits every field.
_TEXT = (pa.types.is_string, pa.types.is_large_string)
_NUMBER = (pa.types.is_integer, pa.types.is_floating)
USABLE_TYPES = {
    web.URL: (_TEXT, "string"),
    web.CAPTION: ((*_TEXT, pa.types.is_binary, pa.types.is_large_binary), "string, or binary holding UTF-8"),
    **{f: (_NUMBER, "an integer or floating-point type") for f in (web.WIDTH, web.HEIGHT, web.AESTHETIC,
                                                                    web.WATERMARK, web.UNSAFE)},
}


def check_web_columns(files: list[str], columns: web.ColumnMap) -> None:
    """Per file, each column the filter reads has a type it can use, and the same type in every file (Ray
    would merge int64 with string only to fail mid-job); UserError names the file, the column and the type."""
    first: dict[str, tuple[str, pa.DataType]] = {}  # column → (first file with a typed column, its type)
    for path in files:
        schema = _read_metadata(path).schema.to_arrow_schema()
        for field, name in columns.physical.items():
            if name is None:
                continue
            found = schema.field(name).type
            if pa.types.is_null(found):  # every value missing: fits any type, and the filter counts each row
                continue
            if name in first and first[name][1] != found:  # first: this message names both files
                raise UserError(f"{path}: column {name} is {found}, but it is {first[name][1]} in {first[name][0]}; "
                                f"every file must give a column the same type")
            checks, expected = USABLE_TYPES[field]
            value_type = found.value_type if pa.types.is_dictionary(found) else found
            if not any(check(value_type) for check in checks):
                raise UserError(f"{path}: column {name} ({field}) is {found}; expected {expected}")
            first.setdefault(name, (path, found))


def _read_metadata(path: str) -> pq.FileMetaData:
    try:
        return pq.read_metadata(path) if "://" not in path else _read_metadata_uri(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise UserError(f"{path} is not a readable parquet file ({_first_line(err)})") from None


def _read_metadata_uri(uri: str):
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    with fs.open_input_file(path) as f:
        return pq.read_metadata(f)


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
