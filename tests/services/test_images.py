"""Image URL policy, without a server: each refusal is a 400 APIError with a specific code."""

from __future__ import annotations

import asyncio
import base64

import pytest
from conftest import data_url, image_bytes

from services.errors import APIError
from services.images import ImagePolicy, decode_image, read_image_bytes


def policy(tmp_path, **overrides) -> ImagePolicy:
    settings = {
        "max_bytes": 100_000,
        "max_pixels": 10_000,
        "image_dir": str(tmp_path / "images"),
        "allowed_hosts": ("images.example.org",),
        "fetch_timeout_s": 1.0,
    }
    settings.update(overrides)
    return ImagePolicy(**settings)


def read(url: str, p: ImagePolicy) -> bytes:
    return asyncio.run(read_image_bytes(url, p, "messages[0].content[0].image_url.url"))


def refused(url: str, p: ImagePolicy) -> APIError:
    with pytest.raises(APIError) as info:
        read(url, p)
    assert info.value.status == 400
    assert info.value.param == "messages[0].content[0].image_url.url"
    return info.value


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "ok.png").write_bytes(image_bytes())
    (tmp_path / "secret.png").write_bytes(image_bytes(seed=1))
    return folder


def test_data_url_round_trip(tmp_path):
    data = image_bytes()
    assert read(data_url(data), policy(tmp_path)) == data


def test_data_url_refusals(tmp_path):
    p = policy(tmp_path)
    assert refused("data:image/png;base64,%%%not-base64%%%", p).code == "invalid_base64"
    assert refused(data_url(b"<html>", mime="text/html"), p).code == "invalid_image_url"
    assert refused("data:image/png,rawbytes", p).code == "invalid_image_url"  # not base64-encoded
    big = base64.b64encode(b"\0" * 200_000).decode()
    assert refused(f"data:image/png;base64,{big}", p).code == "image_too_large"


def test_bare_base64_is_refused_with_a_hint(tmp_path, image_dir):
    error = refused(base64.b64encode(image_bytes()).decode(), policy(tmp_path))
    assert error.code == "invalid_image_url"
    assert "data:image/png;base64" in error.message


def test_local_paths_only_under_image_dir(tmp_path, image_dir):
    p = policy(tmp_path)
    assert read(str(image_dir / "ok.png"), p) == (image_dir / "ok.png").read_bytes()
    assert read("ok.png", p) == (image_dir / "ok.png").read_bytes()
    assert read(f"file://{image_dir / 'ok.png'}", p) == (image_dir / "ok.png").read_bytes()
    assert refused(str(tmp_path / "secret.png"), p).code == "image_url_not_allowed"
    assert refused("../secret.png", p).code == "image_url_not_allowed"
    assert refused(f"file://{tmp_path / 'secret.png'}", p).code == "image_url_not_allowed"


def test_a_symlink_out_of_image_dir_is_refused(tmp_path, image_dir):
    (image_dir / "link.png").symlink_to(tmp_path / "secret.png")
    assert refused("link.png", policy(tmp_path)).code == "image_url_not_allowed"


def test_local_paths_are_off_without_image_dir(tmp_path, image_dir):
    assert refused(str(image_dir / "ok.png"), policy(tmp_path, image_dir="")).code == "image_url_not_allowed"


def test_hosts_outside_the_allow_list_are_refused_before_any_request(tmp_path):
    p = policy(tmp_path)
    assert refused("https://evil.example.com/cat.png", p).code == "image_url_not_allowed"
    assert refused("http://images.example.org.evil.com/cat.png", p).code == "image_url_not_allowed"
    assert refused("ftp://images.example.org/cat.png", p).code == "invalid_image_url"


def test_pixel_limit_is_checked_from_the_header(tmp_path):
    p = policy(tmp_path, max_pixels=40 * 40)
    assert decode_image(image_bytes(40, 40), p, "x").size == (40, 40)
    with pytest.raises(APIError) as info:
        decode_image(image_bytes(41, 40), p, "x")
    assert info.value.code == "image_too_large" and "41x40" in info.value.message


def test_bytes_that_are_no_image(tmp_path):
    with pytest.raises(APIError) as info:
        decode_image(b"GIF89a but not really", policy(tmp_path), "x")
    assert info.value.status == 400 and info.value.code == "invalid_image"
    with pytest.raises(APIError) as info:
        decode_image(image_bytes()[:60], policy(tmp_path), "x")  # truncated PNG
    assert info.value.code == "invalid_image"
