"""mm1.storage: one set of calls for local folders and object-store URIs, checked on both kinds (the S3 side
against the session's real S3-compatible server)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mm1 import storage


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3_bucket") + "/root"


def test_locations_are_told_apart():
    assert not storage.is_uri("runs/x") and not storage.is_remote("/abs/x")
    assert storage.is_uri("file:///tmp/x") and not storage.is_remote("file:///tmp/x")
    assert storage.is_remote("s3://bucket/x") and storage.scheme("gs://b/x") == "gs"
    assert storage.join("s3://b/runs", "q", "ingest") == "s3://b/runs/q/ingest"
    assert storage.join("s3://b/runs", "/abs/x") == "/abs/x"  # an absolute part starts over
    assert storage.join("/data", "s3://b/x") == "s3://b/x"
    assert storage.parent("s3://b/runs/q/") == "s3://b/runs" and storage.name("s3://b/runs/q/") == "q"
    assert storage.absolute("file:///tmp/x") == "/tmp/x"
    assert storage.absolute("rel") == str(Path("rel").resolve())


def test_write_read_list_and_remove(root):
    storage.write_text(storage.join(root, "a", "one.txt"), "1")
    storage.write_bytes(storage.join(root, "a", "b", "two.bin"), b"\x00\x01")
    storage.write_text(storage.join(root, "c", "three.txt"), "333")
    assert storage.read_text(storage.join(root, "a", "one.txt")) == "1"
    assert storage.is_file(storage.join(root, "a", "one.txt")) and storage.is_dir(storage.join(root, "a"))
    assert storage.list_files(storage.join(root, "a")) == [storage.join(root, "a", "one.txt")]
    assert storage.list_files(root, recursive=True, suffix=".bin") == [
        storage.join(root, "a", "b", "two.bin")
    ]
    assert storage.list_dirs(root) == [storage.join(root, "a"), storage.join(root, "c")]
    assert storage.size_of(root) == 1 + 2 + 3
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        storage.read_bytes(storage.join(root, "missing.txt"))
    assert storage.list_files(storage.join(root, "nowhere")) == []
    storage.remove_tree(storage.join(root, "a"))
    assert not storage.exists(storage.join(root, "a", "one.txt"))
    assert storage.list_dirs(root) == [storage.join(root, "c")]
    storage.remove_tree(storage.join(root, "nowhere"))  # absent: nothing happens


def test_a_local_write_never_leaves_half_a_file(tmp_path):
    target = tmp_path / "manifest.json"
    storage.write_text(str(target), "old")
    storage.write_text(str(target), "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_local_copy_downloads_a_remote_folder_once(s3_bucket, tmp_path):
    folder = f"{s3_bucket}/ckpt"
    storage.write_text(f"{folder}/config.json", "{}")
    storage.write_text(f"{folder}/sub/weights.bin", "w")
    cache = tmp_path / "cache"
    copies: list[str] = []
    threads = [
        threading.Thread(target=lambda: copies.append(storage.local_copy(folder, cache))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(copies)) == 1  # racing processes end with one complete copy
    local = Path(copies[0])
    assert (local / "config.json").read_text() == "{}" and (local / "sub" / "weights.bin").read_text() == "w"
    (local / "config.json").unlink()  # a finished copy is reused, not fetched again
    assert storage.local_copy(folder, cache) == str(local) and not (local / "config.json").exists()


def test_local_folders_are_used_in_place(tmp_path):
    assert storage.local_copy(str(tmp_path)) == str(tmp_path.resolve())
    assert storage.local_copy(f"file://{tmp_path}") == str(tmp_path)


def test_copy_tree_both_ways(s3_bucket, tmp_path):
    (tmp_path / "src" / "x").mkdir(parents=True)
    (tmp_path / "src" / "x" / "f.txt").write_text("f")
    storage.copy_tree(str(tmp_path / "src"), f"{s3_bucket}/up")
    storage.copy_tree(f"{s3_bucket}/up", str(tmp_path / "down"))
    assert (tmp_path / "down" / "x" / "f.txt").read_text() == "f"
