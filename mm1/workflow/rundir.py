"""The run directory: one folder per run, one subfolder per step, on a local disk or an object store.

`uri` is where the run lives (a local path, or an mm1.storage URI such as s3://bucket/runs/<run>). What a
step writes on the driver goes into `local_step_dir`: for a local root that folder *is* the step's folder,
for a remote root a staging copy on the driver's disk that `publish` uploads once the step has finished. What
Ray tasks on other nodes write or read goes straight to `step_uri` (never to the driver's staging disk), and
what a step hands on records locations under `uri`, so a later step, a later driver or a fresh head node
reads them from storage, not from a disk it may not have.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from mm1 import storage


def staging_root() -> Path:
    """The driver's staging disk for remote run folders (read when used: a test or a job may set it)."""
    configured = os.environ.get("MM1_STAGING_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "mm1" / "staging"


class RunDir:
    def __init__(self, root: str, run_name: str):
        self.run_name = run_name
        self.uri = storage.join(storage.absolute(root), run_name)
        self.remote = storage.is_remote(root)
        self.local_root = staging_root() / run_name if self.remote else Path(self.uri)

    def step_uri(self, step: str) -> str:
        return storage.join(self.uri, step)

    def local_step_dir(self, step: str) -> Path:
        path = self.local_root / step
        path.mkdir(parents=True, exist_ok=True)
        return path

    def reset_step(self, step: str) -> Path:
        """Empty a step's folder (and its remote copy) before it runs again; training steps, whose folders
        hold the checkpoints they resume from, do not call this."""
        path = self.local_root / step
        if path.exists():
            shutil.rmtree(path)
        if self.remote:
            storage.remove_tree(self.step_uri(step))
        path.mkdir(parents=True)
        return path

    def publish(self, step: str) -> None:
        """Upload what the driver wrote for `step` (a no-op for a local root: it is already there)."""
        if self.remote:
            storage.copy_tree(str(self.local_root / step), self.step_uri(step))

    def read_json(self, relative: str) -> dict[str, Any] | None:
        try:
            return json.loads(storage.read_text(storage.join(self.uri, relative)))
        except (FileNotFoundError, OSError, json.JSONDecodeError):
            return None

    def write_json(self, relative: str, data: dict[str, Any]) -> None:
        """Atomic on either kind of storage, so a killed run never leaves half a manifest."""
        storage.write_text(storage.join(self.uri, relative), json.dumps(data, indent=2, default=str))

    def write_text(self, relative: str, text: str) -> None:
        storage.write_text(storage.join(self.uri, relative), text)
