"""Field names of the local dumps' own annotation formats (SA-1B, JourneyDB) and of caption files, and the
columns that dump jobs carry in flight (never stored)."""

import pyarrow as pa

from lumos.schemas import images as _images

# SA-1B: sa_N.json holds {"image": {"image_id", "width", "height", "file_name"}, "annotations": [...]}
SAM_IMAGE = "image"
SAM_WIDTH = "width"
SAM_HEIGHT = "height"

# JourneyDB annotation jsonl: {"img_path": "./000/<id>.jpg", "prompt": ..., "Task2": {"Caption": ...}}
JDB_PATH = "img_path"
JDB_PROMPT = "prompt"
JDB_TASK2 = "Task2"
JDB_CAPTION = "Caption"

# Caption files joined by file name (SAM-LLaVA-Captions10M and similar): the first column found is used.
CAPTION_KEY_CANDIDATES = ("file_name", "filename", "image", "key", "img")
CAPTION_TEXT_CANDIDATES = ("caption", "txt", "text", "long_caption")
CAPTION_KEY = "key"
CAPTION_TEXT = "caption"

# In flight only: where a member sits in a tar, and why an archive could not be read.
ARCHIVE = "archive"  # the tar a member was read from, as listed by the reader
OFFSET = "offset"  # the member's data offset in that (uncompressed) tar: unique within the tar
SIZE = "size"  # the member's data size in bytes
ERROR = "error"  # one line: why an archive could not be read (rows dropped as `unreadable_archive`)

# The SA-1B pre-pass: one row per image member, read from the tar headers only (no image bytes) ...
MEMBER_SCHEMA = pa.schema([pa.field(_images.KEY, pa.string()), pa.field(ARCHIVE, pa.string()),
                           pa.field(OFFSET, pa.int64()), pa.field(SIZE, pa.int64())])
# ... and its result: the members that lose to an earlier copy of their key, and why.
VERDICT_SCHEMA = pa.schema([pa.field(ARCHIVE, pa.string()), pa.field(OFFSET, pa.int64()),
                            pa.field(_images.DROP_REASON, pa.string())])

# Rows in flight in a dump job: the images work schema plus the archive error.
DUMP_WORK_SCHEMA = _images.WORK_SCHEMA.append(pa.field(ERROR, pa.string()))
