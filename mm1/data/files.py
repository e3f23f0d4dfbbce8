"""Corpus files: the files a list of paths, folders or globs names (local or any mm1.storage location),
and http(s) downloads of images that corpora link to."""

from __future__ import annotations

import fnmatch
import glob
import urllib.request
from pathlib import Path

from mm1 import storage


def expand_paths(patterns: list[str], extensions: tuple[str, ...]) -> list[str]:
    """Files named by `patterns` (files, folders or globs), sorted; a folder contributes its files with one
    of `extensions`. A pattern that matches nothing raises FileNotFoundError naming it."""
    out: list[str] = []
    for pattern in patterns:
        found = (
            _expand_uri(pattern, extensions)
            if storage.is_uri(pattern)
            else _expand_local(pattern, extensions)
        )
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
    wildcards = [pattern.index(ch) for ch in "*?[" if ch in pattern]  # no scheme has one
    if not wildcards:
        if storage.is_file(pattern):
            return [pattern]
        return storage.list_files(pattern, recursive=True, suffix=extensions)
    base = storage.parent(pattern[: min(wildcards)] + "x")  # the folder above the first wildcard
    return [f for f in storage.list_files(base, recursive=True) if fnmatch.fnmatch(f, pattern)]


def download(url: str, timeout_s: float = 10.0, max_bytes: int = 20_000_000) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - http(s) only, checked
        data = response.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"image larger than {max_bytes} bytes")
    return data
