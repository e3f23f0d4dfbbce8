"""File access for corpora: local paths and globs, or pyarrow filesystem URIs (s3://, gs://, ...)."""

from __future__ import annotations

import fnmatch
import glob
import posixpath
import urllib.request
from pathlib import Path
from typing import BinaryIO

import pyarrow.fs as pafs


def is_uri(path: str) -> bool:
    return "://" in path


def is_url(path: str) -> bool:
    return path.startswith(("http://", "https://"))


def _fs(path: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(path)


def expand_paths(patterns: list[str], extensions: tuple[str, ...]) -> list[str]:
    """Files named by `patterns` (files, folders or globs), sorted; a folder contributes its files with one
    of `extensions`. A pattern that matches nothing raises FileNotFoundError naming it."""
    out: list[str] = []
    for pattern in patterns:
        found = _expand_uri(pattern, extensions) if is_uri(pattern) else _expand_local(pattern, extensions)
        if not found:
            raise FileNotFoundError(f"corpus path matches no {'/'.join(extensions)} file: {pattern}")
        out += found
    return sorted(dict.fromkeys(out))


def _expand_local(pattern: str, extensions: tuple[str, ...]) -> list[str]:
    out = []
    for match in sorted(glob.glob(pattern, recursive=True)) or []:
        p = Path(match)
        if p.is_dir():
            out += [str(f) for f in sorted(p.rglob("*")) if f.is_file() and f.name.endswith(extensions)]
        elif p.is_file():
            out.append(str(p))
    return out


def _expand_uri(pattern: str, extensions: tuple[str, ...]) -> list[str]:
    fs, path = _fs(pattern)
    scheme = pattern.split("://", 1)[0]
    has_glob = any(ch in path for ch in "*?[")
    base = path
    if has_glob:
        base = path[: min(path.index(ch) for ch in "*?[" if ch in path)].rsplit("/", 1)[0]
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.File:
        return [pattern]
    if info.type != pafs.FileType.Directory:
        return []
    files = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    names = [f.path for f in files if f.type == pafs.FileType.File]
    if has_glob:
        names = [n for n in names if fnmatch.fnmatch(n, path)]
    else:
        names = [n for n in names if n.endswith(extensions)]
    return [f"{scheme}://{n}" for n in sorted(names)]


def open_input(path: str) -> BinaryIO:
    if is_uri(path):
        fs, inner = _fs(path)
        return fs.open_input_file(inner)  # type: ignore[return-value]  # seekable, for parquet
    return open(path, "rb")  # noqa: SIM115 - the caller closes it


def read_bytes(path: str) -> bytes:
    """Whole file contents; FileNotFoundError when it does not exist (local or remote)."""
    if is_uri(path):
        fs, inner = _fs(path)
        if fs.get_file_info(inner).type == pafs.FileType.NotFound:
            raise FileNotFoundError(path)
        with fs.open_input_stream(inner) as f:
            return f.read()
    return Path(path).read_bytes()


def join(root: str, relative: str) -> str:
    """`relative` under `root` (absolute paths and URIs are returned unchanged)."""
    if is_uri(relative) or relative.startswith("/"):
        return relative
    if is_uri(root):
        return posixpath.join(root, relative)
    return str(Path(root) / relative)


def parent(path: str) -> str:
    return posixpath.dirname(path) if is_uri(path) else str(Path(path).parent)


def download(url: str, timeout_s: float = 10.0, max_bytes: int = 20_000_000) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - http(s) only, checked
        data = response.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"image larger than {max_bytes} bytes")
    return data
