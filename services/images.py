"""Turn the `image_url` of a chat message into a decoded image, within the deployment's limits.

Accepted: `data:image/...;base64,` URLs; local files (file:// or a plain path) only under `image_dir`; http(s)
only from `allowed_hosts`, fetched with a total deadline and a byte cap while downloading. Everything else, and
every limit crossed, is an `APIError` (400) that names the offending message part. Decoding itself is the
shared `mm1.data.preprocess.load_image`, so a served image goes through the same code as a training image.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx
from PIL import Image, UnidentifiedImageError

from mm1.data.preprocess import ImageDecodeError, load_image
from services.errors import APIError, bad_request
from services.settings import ServeSettings

_DATA_URL = re.compile(r"data:(?P<mime>[^;,]*)(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)", re.DOTALL)
_BASE64 = re.compile(r"[A-Za-z0-9+/\s]+={0,2}\s*")


@dataclass(frozen=True)
class ImagePolicy:
    max_bytes: int
    max_pixels: int
    image_dir: str
    allowed_hosts: tuple[str, ...]
    fetch_timeout_s: float

    @classmethod
    def from_settings(cls, s: ServeSettings) -> ImagePolicy:
        return cls(
            s.max_image_bytes, s.max_image_pixels, s.image_dir, s.allowed_image_hosts, s.image_fetch_timeout_s
        )


def _too_large(what: str, param: str) -> APIError:
    return bad_request(what, param=param, code="image_too_large")


def _not_allowed(what: str, param: str) -> APIError:
    return bad_request(what, param=param, code="image_url_not_allowed")


def _decode_data_url(url: str, policy: ImagePolicy, param: str) -> bytes:
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise bad_request(
            "only base64 data URLs are supported: data:image/<type>;base64,<data>", param, "invalid_image_url"
        )
    mime = match["mime"].strip().lower()
    if not mime.startswith("image/"):
        raise bad_request(
            f"data URL media type {mime or '(none)'!r} is not an image/* type", param, "invalid_image_url"
        )
    payload = match["data"]
    # Refuse before decoding: base64 is 4 characters per 3 bytes.
    if len(payload) * 3 // 4 > policy.max_bytes + 3:
        raise _too_large(f"image is larger than the {policy.max_bytes}-byte limit", param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(
            "the data URL's base64 payload is not valid base64", param, "invalid_base64"
        ) from None
    if len(data) > policy.max_bytes:
        raise _too_large(f"image is {len(data)} bytes, over the {policy.max_bytes}-byte limit", param)
    return data


def _looks_like_bare_base64(url: str) -> bool:
    return len(url) >= 64 and _BASE64.fullmatch(url) is not None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the filesystem, a NUL byte
        return False


def _read_local(path_text: str, policy: ImagePolicy, param: str) -> bytes:
    if not policy.image_dir:
        raise _not_allowed(
            "local image paths are not enabled on this server (no image_dir configured)", param
        )
    root = Path(policy.image_dir).resolve()
    candidate = Path(path_text)
    # resolve() follows symlinks and '..', so a link or a relative path cannot step outside the folder.
    try:
        resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    except (OSError, ValueError, RuntimeError):  # RuntimeError: a symlink loop
        raise bad_request(
            f"image path cannot be resolved: {path_text[:200]}", param, "invalid_image_url"
        ) from None
    if not resolved.is_relative_to(root):
        raise _not_allowed("local image paths must lie under the server's image_dir", param)
    if not _is_file(resolved):
        raise bad_request(f"image file not found: {path_text[:200]}", param, "invalid_image")
    size = resolved.stat().st_size
    if size > policy.max_bytes:
        raise _too_large(f"image is {size} bytes, over the {policy.max_bytes}-byte limit", param)
    return resolved.read_bytes()


def _host_allowed(url: str, policy: ImagePolicy) -> bool:
    parsed = urlparse(url)
    host = (parsed.hostname or "").lower()
    allowed = {h.lower() for h in policy.allowed_hosts}
    return bool(host) and (host in allowed or parsed.netloc.lower() in allowed)


async def _download(url: str, policy: ImagePolicy, param: str) -> bytes:
    async with httpx.AsyncClient(follow_redirects=False) as client:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise bad_request(
                    f"fetching the image returned HTTP {response.status_code}", param, "image_fetch_failed"
                )
            declared = int(response.headers.get("content-length") or 0)
            if declared > policy.max_bytes:
                raise _too_large(f"image is {declared} bytes, over the {policy.max_bytes}-byte limit", param)
            data = bytearray()
            async for piece in response.aiter_bytes():
                data += piece
                if len(data) > policy.max_bytes:
                    raise _too_large(f"image is over the {policy.max_bytes}-byte limit", param)
            return bytes(data)


async def _fetch(url: str, policy: ImagePolicy, param: str) -> bytes:
    if not _host_allowed(url, policy):
        host = urlparse(url).hostname or "(none)"
        raise _not_allowed(f"image host {host!r} is not in this server's allowed_image_hosts", param)
    try:
        # One deadline for the whole download (httpx's own timeouts apply per read, not in total).
        return await asyncio.wait_for(_download(url, policy, param), policy.fetch_timeout_s)
    except asyncio.TimeoutError:
        raise bad_request(
            f"fetching the image took longer than {policy.fetch_timeout_s:g} s", param, "image_fetch_timeout"
        ) from None
    except httpx.HTTPError as exc:
        raise bad_request(
            f"fetching the image failed: {type(exc).__name__}", param, "image_fetch_failed"
        ) from None


async def read_image_bytes(url: str, policy: ImagePolicy, param: str) -> bytes:
    """The encoded bytes behind `url`, or an APIError naming `param`."""
    url = url.strip()
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return _decode_data_url(url, policy, param)
    if scheme in ("http", "https"):
        return await _fetch(url, policy, param)
    if scheme == "file":
        return await asyncio.to_thread(_read_local, unquote(urlparse(url).path), policy, param)
    if _looks_like_bare_base64(url) and not (policy.image_dir and _is_file(Path(policy.image_dir, url))):
        raise bad_request(
            "image_url.url looks like bare base64; send it as a data URL: data:image/png;base64,<data>",
            param,
            "invalid_image_url",
        )
    if scheme and len(scheme) > 1:  # a one-letter "scheme" is a Windows drive, i.e. a path
        raise bad_request(f"unsupported image URL scheme {scheme!r}", param, "invalid_image_url")
    return await asyncio.to_thread(_read_local, url, policy, param)


def decode_image(data: bytes, policy: ImagePolicy, param: str) -> Image.Image:
    """Check the pixel count from the header (before a full decode can exhaust memory), then decode."""
    try:
        with Image.open(io.BytesIO(data)) as header:  # reads the header only
            width, height = header.size
    except Image.DecompressionBombError:  # PIL's own ceiling, far above any sane max_pixels
        raise _too_large(f"image has more than the {policy.max_pixels}-pixel limit", param) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise bad_request(
            "the image data is not an image format this server can decode", param, "invalid_image"
        ) from None
    if width * height > policy.max_pixels:
        raise _too_large(f"image is {width}x{height} pixels, over the {policy.max_pixels}-pixel limit", param)
    try:
        return load_image(data)
    except ImageDecodeError as exc:
        raise bad_request(f"the image cannot be decoded: {exc}", param, "invalid_image") from None
