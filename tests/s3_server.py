"""A real S3-compatible server for the tests: moto's standalone server in its own process, reached the way a
user reaches AWS S3 or MinIO (AWS_ENDPOINT_URL and the key variables), never a mock inside this process."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

BIN = Path(sys.executable).parent
_buckets = itertools.count()


@dataclass
class S3Server:
    endpoint: str
    env: dict[str, str]  # the variables a client (or a Ray node) needs to reach it

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            endpoint_override=self.endpoint,
            access_key=self.env["AWS_ACCESS_KEY_ID"],
            secret_key=self.env["AWS_SECRET_ACCESS_KEY"],
            region=self.env["AWS_REGION"],
            allow_bucket_creation=True,
            allow_bucket_deletion=True,
        )

    def new_bucket(self, prefix: str = "mm1-test") -> str:
        """A fresh, empty bucket; returns its s3:// URI."""
        name = f"{prefix}-{os.getpid()}-{next(_buckets)}"
        self.filesystem().create_dir(name)
        return f"s3://{name}"

    def upload(self, local: Path, uri: str) -> None:
        bucket_path = uri.removeprefix("s3://")
        pafs.copy_files(str(local), bucket_path, destination_filesystem=self.filesystem())

    def usage(self, uri: str) -> dict[str, int]:
        """Bytes stored under each immediate subfolder of `uri` (and '.' for files directly in it)."""
        fs, base = self.filesystem(), uri.removeprefix("s3://").rstrip("/")
        sizes: dict[str, int] = {}
        for info in fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True)):
            if info.type == pafs.FileType.File:
                relative = info.path[len(base) + 1 :]
                top = relative.split("/", 1)[0] if "/" in relative else "."
                sizes[top] = sizes.get(top, 0) + (info.size or 0)
        return sizes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3_server(log_path: Path) -> tuple[subprocess.Popen, S3Server]:
    port = _free_port()
    log = open(log_path, "wb")  # noqa: SIM115 - the server keeps writing to it until stopped
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
            break
        except (urllib.error.URLError, ConnectionError, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server did not start; see {log_path}") from None
            time.sleep(0.2)
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "mm1-test-key",
        "AWS_SECRET_ACCESS_KEY": "mm1-test-secret",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata probing for credentials or region
    }
    return proc, S3Server(endpoint, env)
