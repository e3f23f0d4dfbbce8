"""Where a replica reads its checkpoint from: a local folder as is, or a copy of a filesystem URI.

On Kubernetes with s3:// storage the winner is `s3://bucket/.../winner`; a replica copies it once to its own
disk (pyarrow's filesystems, as the rest of the run directory uses) and loads the copy.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import pyarrow.fs as pafs


def local_checkpoint(location: str, cache_root: str | None = None) -> str:
    """`location` if it is a local path; otherwise a local copy of the URI (reused when already there)."""
    if "://" not in location:
        return location
    filesystem, path = pafs.FileSystem.from_uri(location)
    if isinstance(filesystem, pafs.LocalFileSystem):
        return path
    root = Path(cache_root or tempfile.gettempdir()) / "mm1-checkpoints"
    return fetch_checkpoint(filesystem, path, root / hashlib.sha256(location.encode()).hexdigest()[:16])


def fetch_checkpoint(filesystem: pafs.FileSystem, path: str, target: Path) -> str:
    """Copy the folder `path` of `filesystem` to `target` unless a previous copy completed."""
    done = target / ".complete"  # written last: a copy cut short is redone
    if not done.exists():
        target.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(path, str(target), source_filesystem=filesystem)
        done.touch()
    return str(target)
