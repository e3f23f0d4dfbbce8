"""Storage: the one place that knows a local path from a filesystem URI (s3://, gs://, file://, ...).

Every step reads and writes through these functions, so the same code runs on a laptop (a local run folder)
and on a cluster whose nodes share no disk (the run folder on an object store). URIs go through pyarrow's
filesystems, configured the standard way: for S3 or an S3-compatible store (MinIO, ...) the variables
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL and AWS_REGION.

A Ray task on another node must never be handed a path on the driver's disk: hand it a location under the
run folder (a URI when the root is remote) and let it call `local_copy` or `read_bytes` here.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tempfile
import uuid
from pathlib import Path

import pyarrow.fs as pafs

_SCHEME_SEPARATOR = "://"


def is_uri(location: str) -> bool:
    """A filesystem URI (scheme://...), local (file://) or not."""
    return _SCHEME_SEPARATOR in str(location)


def is_remote(location: str) -> bool:
    """A location other processes on other nodes can reach without a shared disk (not a local path)."""
    return is_uri(location) and not str(location).startswith("file://")


def is_http(location: str) -> bool:
    """An http(s) URL: fetched with a plain download, never listed or written."""
    return str(location).startswith(("http://", "https://"))


def scheme(location: str) -> str:
    return str(location).split(_SCHEME_SEPARATOR, 1)[0] if is_uri(location) else ""


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of `location` and the path inside it."""
    location = str(location)
    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())
    return pafs.FileSystem.from_uri(location.rstrip("/"))


def with_scheme(like: str, path: str) -> str:
    """`path` (inside the filesystem of `like`) as a location of the same kind as `like`."""
    return f"{scheme(like)}{_SCHEME_SEPARATOR}{path}" if is_remote(like) else path


def join(root: str, *parts: str) -> str:
    """`parts` under `root`; an absolute path or URI among them starts over from there."""
    out = str(root)
    for part in parts:
        part = str(part)
        if is_uri(part) or part.startswith("/"):
            out = part
        elif is_uri(out):
            out = posixpath.join(out, part)
        else:
            out = str(Path(out) / part)
    return out


def parent(location: str) -> str:
    return posixpath.dirname(str(location).rstrip("/")) if is_uri(location) else str(Path(location).parent)


def name(location: str) -> str:
    return posixpath.basename(str(location).rstrip("/"))


def absolute(location: str) -> str:
    """A local path made absolute (a job may run in another working folder); URIs unchanged."""
    if is_uri(location):
        return location.removeprefix("file://") if location.startswith("file://") else location
    return str(Path(location).expanduser().resolve())


# ----------------------------------------------------------------------------------------------- queries


def _info(location: str) -> pafs.FileInfo:
    fs, path = filesystem(location)
    return fs.get_file_info(path)


def exists(location: str) -> bool:
    return _info(location).type != pafs.FileType.NotFound


def is_file(location: str) -> bool:
    return _info(location).type == pafs.FileType.File


def is_dir(location: str) -> bool:
    return _info(location).type == pafs.FileType.Directory


def list_files(location: str, recursive: bool = False, suffix: str | tuple[str, ...] = "") -> list[str]:
    """Files under the folder `location` (sorted locations of the same kind); [] when it does not exist."""
    fs, path = filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    found = [i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix)]
    return sorted(with_scheme(location, p) for p in found)


def list_dirs(location: str) -> list[str]:
    """Immediate subfolders of `location` (sorted); [] when it does not exist."""
    fs, path = filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(with_scheme(location, i.path) for i in infos if i.type == pafs.FileType.Directory)


def size_of(location: str) -> int:
    """Bytes under `location` (a file or a folder tree); 0 when absent."""
    fs, path = filesystem(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return info.size or 0
    if info.type != pafs.FileType.Directory:
        return 0
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sum(i.size or 0 for i in infos if i.type == pafs.FileType.File)


# ------------------------------------------------------------------------------------------ read / write


def open_input(location: str):
    """A seekable binary file (parquet readers need one); the caller closes it."""
    fs, path = filesystem(location)
    return fs.open_input_file(path)


def read_bytes(location: str) -> bytes:
    """The whole file; FileNotFoundError naming `location` when it does not exist."""
    fs, path = filesystem(location)
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(f"no such file: {location}")
    with fs.open_input_stream(path) as stream:
        return stream.read()


def read_text(location: str) -> str:
    return read_bytes(location).decode("utf-8")


def write_bytes(location: str, data: bytes) -> None:
    """Write a whole file. Local files are written to a temporary name and renamed, so a killed run never
    leaves half a file; an object store's PUT is atomic by itself."""
    fs, path = filesystem(location)
    if isinstance(fs, pafs.LocalFileSystem):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode("utf-8"))


def make_dirs(location: str) -> None:
    fs, path = filesystem(location)
    fs.create_dir(path, recursive=True)


def remove_tree(location: str) -> None:
    """Delete a folder and everything under it; nothing happens when it does not exist."""
    fs, path = filesystem(location)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def copy_tree(source: str, target: str) -> None:
    """Copy the folder `source` to `target` (either side local or a URI)."""
    source_fs, source_path = filesystem(source)
    target_fs, target_path = filesystem(target)
    if isinstance(target_fs, pafs.LocalFileSystem):
        Path(target_path).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(source_path, target_path, source_filesystem=source_fs, destination_filesystem=target_fs)


# ------------------------------------------------------------------------------------------- local copies


def cache_root() -> Path:
    """This machine's cache of downloaded folders (per node: every node keeps its own copies)."""
    configured = os.environ.get("MM1_CACHE_DIR")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "mm1-cache"


def local_copy(location: str, cache: str | Path | None = None) -> str:
    """A local folder with the contents of `location`: the folder itself when it is local, otherwise a copy
    made once per machine (a copy cut short by a crash is redone, never half used)."""
    if not is_remote(location):
        return absolute(location)
    digest = hashlib.sha256(location.rstrip("/").encode()).hexdigest()[:16]
    target = Path(cache or cache_root()) / "downloads" / f"{name(location)}-{digest}"
    done = target / ".complete"
    if not done.exists():
        if target.exists():
            shutil.rmtree(target)
        partial = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}.partial")
        copy_tree(location, str(partial))
        (partial / ".complete").touch()
        try:
            os.replace(partial, target)  # another process may have finished first: keep its copy
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
    return str(target)
