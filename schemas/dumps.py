"""Field names of the dumps' own annotation formats (SA-1B, JourneyDB) and of caption files, and the
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
INPUT_PATH = "input_path"  # the caption or annotation file a pre-pass task reads
FILE = "file"  # a caption or annotation row's file: its position in the sorted list of the input's files
LINE = "line"  # ... and its line (jsonl, from 1) or row (parquet, json array, from 0) in that file
GROUP = "group"  # the JourneyDB pre-pass's shuffle key: the key, or a bad line's own name
PLAN_UNIT = "plan_unit"  # the JourneyDB work unit a row goes to (an archive's folder, or a chunk of lines)
PLAN_PATH = "plan_path"  # the file under the job's work folder that holds one work unit's plan

# The SA-1B pre-pass: one row per image member, read from the tar headers only (no image bytes), shuffled
# by key together with the caption rows (archive null; caption as bytes, checked when read) ...
SAM_KEY_SCHEMA = pa.schema([pa.field(_images.KEY, pa.string()), pa.field(ARCHIVE, pa.string()),
                            pa.field(_images.UNIT, pa.int64()), pa.field(OFFSET, pa.int64()),
                            pa.field(SIZE, pa.int64()), pa.field(_images.CAPTION, pa.binary()),
                            pa.field(FILE, pa.int64()), pa.field(LINE, pa.int64())])
# ... into what one tar's read task needs: its members that lose to an earlier copy of their key (with the
# reason) and the kept members' captions; one small file per tar that has any.
SAM_PLAN_SCHEMA = pa.schema([pa.field(_images.UNIT, pa.int64()), pa.field(OFFSET, pa.int64()),
                             pa.field(_images.DROP_REASON, pa.string()), pa.field(_images.CAPTION, pa.binary())])
# The JourneyDB pre-pass: one row per annotation line (prompt as caption, Task2.Caption as long_caption) ...
JDB_LINE_SCHEMA = pa.schema([pa.field(GROUP, pa.string()), pa.field(_images.KEY, pa.string()),
                             pa.field(_images.CAPTION, pa.string()), pa.field(_images.LONG_CAPTION, pa.string()),
                             pa.field(_images.DROP_REASON, pa.string()), pa.field(FILE, pa.int64()),
                             pa.field(LINE, pa.int64())])
# ... with the unit it goes to, after the first line of each key has won ...
JDB_PLANNED_SCHEMA = JDB_LINE_SCHEMA.append(pa.field(PLAN_UNIT, pa.string())).append(pa.field(ARCHIVE, pa.string()))
# ... and one file per work unit: its rows in file order.
JDB_UNIT_SCHEMA = pa.schema([pa.field(_images.KEY, pa.string()), pa.field(_images.CAPTION, pa.string()),
                             pa.field(_images.LONG_CAPTION, pa.string()),
                             pa.field(_images.DROP_REASON, pa.string())])
# What a plan's writer hands back to the driver: one row per written file.
PLAN_FILE_SCHEMA = pa.schema([pa.field(PLAN_UNIT, pa.string()), pa.field(ARCHIVE, pa.string()),
                              pa.field(PLAN_PATH, pa.string())])

# Rows in flight in a dump job: the images work schema plus the archive error.
DUMP_WORK_SCHEMA = _images.WORK_SCHEMA.append(pa.field(ERROR, pa.string()))
