"""Files beside the Lance tables (stats, part files, staging) on a local disk or an object store, one API.

Every path may be a local path or a URI (`s3://bucket/key`, `gs://…`, `file:///…`); pyarrow's filesystem layer
does the work. A write is whole or absent: locally through a temporary file and a rename, on an object store as
one PUT (an object appears only when its upload completes).

Configuration comes from the environment alone, no options passed. Credentials: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN), or the AWS profile files. pyarrow 26 (AWS SDK for C++) takes the
endpoint from AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, scheme included (so `http://host:port` is plain HTTP), uses
path-style addressing with it, and ignores AWS_ENDPOINT and AWS_ALLOW_HTTP; without an endpoint it asks AWS for
the bucket's region. Lance 14 (Rust object_store) takes the endpoint from AWS_ENDPOINT or AWS_ENDPOINT_URL
(AWS_ENDPOINT_URL_S3 works too) and refuses a plain-HTTP endpoint ("HTTP error: builder error") unless
AWS_ALLOW_HTTP=true. Both read AWS_REGION. So one S3-compatible server (MinIO, moto, Ceph) serves both with
AWS_ENDPOINT_URL=http://host:port, AWS_ALLOW_HTTP=true, AWS_REGION and the two keys; AWS_EC2_METADATA_DISABLED=true
stops the SDK from probing the EC2 metadata address. Ray workers inherit the environment that the process which
started Ray had when it started it (see tests/objectstore.py).
"""

from __future__ import annotations

import io
import json
import os
import uuid

import pyarrow.fs as pafs


def is_local(uri: str) -> bool:
    """A plain path (no `scheme://`): lives on this machine's disk."""
    return "://" not in uri


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI."""
    if is_local(uri):
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    fs, path = pafs.FileSystem.from_uri(uri)
    if isinstance(fs, pafs.S3FileSystem):
        fs = _single_put(fs)
    return fs, path


def _single_put(fs: pafs.S3FileSystem) -> pafs.S3FileSystem:
    """The same S3 filesystem with delayed open: a small file is then one PutObject instead of a multipart
    upload's three requests (large files still go multipart)."""
    rebuild, (options,) = fs.__reduce__()  # the options from_uri chose (pickling's public view of them)
    if options.get("allow_delayed_open", True):
        return fs
    return rebuild({**options, "allow_delayed_open": True})


def join(uri: str, *parts: str) -> str:
    """`uri`/part/…: with `/` for a URI, with the OS separator for a local path."""
    if is_local(uri):
        return os.path.join(uri, *parts)
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts if p.strip("/"))])


def exists(uri: str) -> bool:
    """A file or a directory (on an object store: any object under the prefix) is at `uri`."""
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str) -> bytes:
    """The whole file; FileNotFoundError when there is none."""
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write (replace) the file whole: a reader sees the old file or the new one, never part of one."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    with fs.open_output_stream(path) as f:
        f.write(data)


def read_json(uri: str):
    return json.loads(read_bytes(uri))


def write_json(uri: str, obj) -> None:
    """Written whole (see write_bytes): indented, keys sorted (stats and job records people read)."""
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True).encode())


def remove(uri: str, missing_ok: bool = False) -> None:
    """Delete one file; FileNotFoundError when it is absent, unless `missing_ok`.

    On S3, pyarrow then PUTs an empty marker object for the parent "directory" (`…/_staging/3/`): two requests
    per file. To drop many files, prefer one remove_tree of their directory (batched deletes)."""
    fs, path = resolve(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        if not missing_ok:
            raise


def remove_tree(uri: str) -> None:
    """Delete a directory (on an object store: every object under the prefix) and all in it; absent is fine.
    On S3 pyarrow leaves an empty marker object for the parent (`out.lance/`); Lance ignores it."""
    fs, path = resolve(uri)
    try:
        fs.delete_dir(path)
    except FileNotFoundError:
        pass


def list_files(uri: str) -> list[str]:
    """Every file under `uri`, recursively, as paths/URIs of the same form as `uri`, sorted; [] when absent.

    One listing entry per file: for tests and cleanup, not for walking a table's 742k fragments."""
    fs, path = resolve(uri)
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    prefix = path.rstrip("/") + "/"
    return sorted(join(uri, *info.path[len(prefix):].split("/"))
                  for info in fs.get_file_info(selector) if info.type == pafs.FileType.File)


def open_input_file(uri: str, buffer_size: int = 1 << 20):
    """A seekable binary file object for reading `uri` in place (a tar read member by member, never downloaded
    whole): a plain file locally; on an object store pyarrow's RandomAccessFile (each read a ranged GET) behind
    an `io.BufferedReader`, so that small reads and short forward seeks are served from one GET of
    `buffer_size` bytes. FileNotFoundError when there is none."""
    if is_local(uri):
        return open(uri, "rb")
    fs, path = resolve(uri)
    return io.BufferedReader(_RawFile(fs.open_input_file(path)), buffer_size)


class _RawFile(io.RawIOBase):
    """A pyarrow NativeFile as an io.RawIOBase (what io.BufferedReader wraps)."""

    def __init__(self, native):
        super().__init__()
        self.native = native

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.native.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.native.seek(offset, whence)

    def tell(self) -> int:
        return self.native.tell()

    def close(self) -> None:
        if not self.closed:
            self.native.close()
        super().close()
