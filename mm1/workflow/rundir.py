"""The run directory: one folder per run, one subfolder per step, on a local disk or any pyarrow filesystem.

Steps write into a local folder (`local_step_dir`); for a local root that folder *is* the run directory, for a
remote root (s3://, gs://, ...) it is a staging copy that `publish` uploads once the step has finished and
`fetch` downloads for a later step (or a later machine). Manifests are read and written through pyarrow so
`mm1 status` works on either.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

STAGING_ROOT = Path(os.environ.get("MM1_STAGING_DIR", Path.home() / ".cache" / "mm1" / "staging"))


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


class RunDir:
    def __init__(self, root: str, run_name: str):
        self.run_name = run_name
        if is_remote(root):
            self.fs, base = pafs.FileSystem.from_uri(root.rstrip("/"))
            self.path = f"{base}/{run_name}"
            self.uri = f"{root.rstrip('/')}/{run_name}"
            self.local_root = STAGING_ROOT / run_name
        else:
            local = Path(root.removeprefix("file://")).expanduser().resolve() / run_name
            self.fs, self.path, self.uri, self.local_root = (
                pafs.LocalFileSystem(),
                str(local),
                str(local),
                local,
            )
        self.remote = is_remote(root)

    def step_uri(self, step: str) -> str:
        return f"{self.uri}/{step}"

    def local_step_dir(self, step: str) -> Path:
        path = self.local_root / step
        path.mkdir(parents=True, exist_ok=True)
        return path

    def reset_step(self, step: str) -> Path:
        """Empty a step's folder before it runs again; its checkpoints (under `keep`) are the caller's business."""
        path = self.local_root / step
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def publish(self, step: str) -> None:
        if self.remote:
            pafs.copy_files(
                str(self.local_root / step), f"{self.path}/{step}", destination_filesystem=self.fs
            )

    def fetch(self, step: str) -> Path:
        local = self.local_root / step
        if self.remote and not (local / "manifest.json").exists():
            pafs.copy_files(f"{self.path}/{step}", str(local), source_filesystem=self.fs)
        return local

    def read_json(self, relative: str) -> dict[str, Any] | None:
        try:
            with self.fs.open_input_stream(f"{self.path}/{relative}") as stream:
                return json.loads(stream.read().decode())
        except (FileNotFoundError, OSError, json.JSONDecodeError):
            return None

    def write_json(self, relative: str, data: dict[str, Any]) -> None:
        """Write atomically on local disks (tmp + rename) so a killed run never leaves half a manifest."""
        text = json.dumps(data, indent=2, default=str)
        if self.remote:
            with self.fs.open_output_stream(f"{self.path}/{relative}") as stream:
                stream.write(text.encode())
            return
        target = Path(self.path) / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, target)
