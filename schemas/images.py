"""The images table: one row per curated image, the contract between curation and encoding.

Every column name used anywhere in the project is defined here or in a sibling module of `schemas/`.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from importlib import metadata as importlib_metadata

import pyarrow as pa

# Column names of the images table.
ID = "id"
SOURCE = "source"
KEY = "key"
URL = "url"
CAPTION = "caption"
LONG_CAPTION = "long_caption"  # a second, longer caption where a source has one (JourneyDB's Task2)
CLASS_INDEX = "class_index"  # ImageNet: position of the synset in the class list
SYNSET = "synset"  # ImageNet: the WordNet id, e.g. n01440764
AESTHETIC = "aesthetic"
ORIGINAL_WIDTH = "original_width"
ORIGINAL_HEIGHT = "original_height"
WIDTH = "width"
HEIGHT = "height"
IMAGE = "image"
SHA256 = "sha256"

# Lance stores a large_binary field carrying this metadata as a blob column: the bytes live out of line,
# so scans of the other columns never touch them, and readers fetch them with `take_blobs`.
BLOB_METADATA = {"lance-encoding:blob": "true"}

IMAGES_SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(KEY, pa.string(), nullable=False),
        pa.field(URL, pa.string()),
        pa.field(CAPTION, pa.string()),
        pa.field(LONG_CAPTION, pa.string()),
        pa.field(CLASS_INDEX, pa.int32()),
        pa.field(SYNSET, pa.string()),
        pa.field(AESTHETIC, pa.float32()),
        pa.field(ORIGINAL_WIDTH, pa.int32(), nullable=False),
        pa.field(ORIGINAL_HEIGHT, pa.int32(), nullable=False),
        pa.field(WIDTH, pa.int32(), nullable=False),
        pa.field(HEIGHT, pa.int32(), nullable=False),
        pa.field(SHA256, pa.string(), nullable=False),
        # Last on purpose: Lance expands a blob field into several, and a distributed commit of fragments
        # (write_fragments + commit) only lines up the field ids when no column follows it (pylance 14).
        pa.field(IMAGE, pa.large_binary(), nullable=False, metadata=BLOB_METADATA),
    ]
)

# Not stored: the column a pipeline carries to say why a row is dropped (null: kept). Rows in flight use
# WORK_SCHEMA, where a dropped row may lack its image and sizes.
DROP_REASON = "drop_reason"
WORK_SCHEMA = pa.schema(
    [f.with_nullable(True) for f in IMAGES_SCHEMA] + [pa.field(DROP_REASON, pa.string())]
)

# In flight only, in the dump jobs: the work unit a row comes from, and on the unit's last block its row count.
UNIT = "unit"
UNIT_ROWS = "unit_rows"

# Table metadata keys (stored as the Arrow schema metadata of the Lance table).
META_KIND = "lumos.kind"
META_JOB = "lumos.job"
KIND_IMAGES = "images"
# Set by the writers that keep one row per id (every lumos-curate job since keys are de-duplicated): readers
# trust it; a table without it (made before) may repeat ids and is checked before it is encoded.
META_UNIQUE_IDS = "lumos.unique_ids"
# A curation job's progress, committed with its fragments (curation/unit_writer.py): units done, rows counted.
META_PROGRESS = "lumos.progress"
# The table's identity: a random id (uuid4 hex) written once, when the table is created, and kept by every
# later commit to it (a resumed or extended job, `score`, `compact`). A copy or a move of the folder keeps it,
# so the features' provenance names the table by it, not by its path; a table made anew gets a new one.
META_TABLE_ID = "lumos.table_id"


class SchemaError(ValueError):
    """A table does not have the shape a stage needs; the message says what differs."""


def make_id(source: str, key: str) -> str:
    """Stable image id: the same image from the same source gets the same id on every ingest."""
    return hashlib.sha1(f"{source}\x00{key}".encode()).hexdigest()[:24]


def make_ids(source: str, keys: list[str]) -> pa.Array:
    return pa.array([make_id(source, k) for k in keys], pa.string())


def library_versions(*names: str) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def new_table_id() -> str:
    return uuid.uuid4().hex


def images_schema(job: dict, unique_ids: bool = False, table_id: str | None = None) -> pa.Schema:
    """The images schema carrying `job` (source, thresholds, library versions) as table metadata, the
    unique-ids marker when the writer guarantees one row per id, and a table id (a new one unless given): the
    identity of a table created with this schema. A writer that re-opens a table keeps the table's own."""
    meta = {META_KIND: KIND_IMAGES, META_JOB: json.dumps(job, sort_keys=True),
            META_TABLE_ID: table_id or new_table_id()}
    if unique_ids:
        meta[META_UNIQUE_IDS] = "true"
    return IMAGES_SCHEMA.with_metadata(meta)


def table_id_of(schema: pa.Schema) -> str | None:
    """The table's identity (META_TABLE_ID); None for a table made before tables had one."""
    raw = (schema.metadata or {}).get(META_TABLE_ID.encode())
    return raw.decode() if raw else None


def has_unique_ids(schema: pa.Schema) -> bool:
    """Whether the table's writer guaranteed one row per id (META_UNIQUE_IDS)."""
    return (schema.metadata or {}).get(META_UNIQUE_IDS.encode()) == b"true"


def job_of(schema: pa.Schema) -> dict:
    """The job record an images table was written with."""
    raw = (schema.metadata or {}).get(META_JOB.encode())
    return json.loads(raw) if raw else {}


def validate(schema: pa.Schema) -> None:
    """Raise SchemaError naming every missing column and every column of the wrong type."""
    problems = []
    for field in IMAGES_SCHEMA:
        if field.name not in schema.names:
            problems.append(f"missing column '{field.name}'")
            continue
        got = schema.field(field.name).type
        # Lance hands blob columns back as its own extension type; the stored bytes are the same.
        if field.name == IMAGE and _is_lance_blob(got):
            continue
        if got != field.type:
            problems.append(f"column '{field.name}' is {got}, expected {field.type}")
    if problems:
        raise SchemaError(f"not an images table: {'; '.join(problems)} (columns: {', '.join(schema.names)})")


def _is_lance_blob(arrow_type: pa.DataType) -> bool:
    return isinstance(arrow_type, pa.ExtensionType) and "blob" in arrow_type.extension_name
