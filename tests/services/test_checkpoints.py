"""Checkpoint locations: a local folder is used in place; a remote one is copied once and the copy reused."""

from __future__ import annotations

import pyarrow.fs as pafs

from mm1.model import load_for_inference
from services.checkpoints import fetch_checkpoint, local_checkpoint


def test_local_paths_and_file_uris_are_used_in_place(tiny_checkpoint):
    assert local_checkpoint(tiny_checkpoint) == tiny_checkpoint
    assert local_checkpoint(f"file://{tiny_checkpoint}") == tiny_checkpoint


def test_a_remote_folder_is_copied_once(tiny_checkpoint, tmp_path):
    # A SubTreeFileSystem stands in for a remote store such as s3.
    remote = pafs.SubTreeFileSystem(tiny_checkpoint, pafs.LocalFileSystem())
    target = tmp_path / "copy"
    assert fetch_checkpoint(remote, "", target) == str(target)
    load_for_inference(str(target))  # complete and loadable
    (target / "config.json").unlink()  # a finished copy is not fetched again
    fetch_checkpoint(remote, "", target)
    assert not (target / "config.json").exists()
