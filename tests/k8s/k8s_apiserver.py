"""A stand-in Kubernetes API server on 127.0.0.1 for the submit tests.

It answers discovery (/version, /api/v1, /apis, /apis/ray.io/v1), server-side apply (PATCH), GET and DELETE
of namespaced objects, records every request, and walks a RayJob through a scripted status sequence, one
step per GET, as the KubeRay operator would.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

CORE_RESOURCES = [
    {"name": "configmaps", "singularName": "configmap", "namespaced": True, "kind": "ConfigMap"},
    {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod"},
    {"name": "namespaces", "singularName": "namespace", "namespaced": False, "kind": "Namespace"},
]
RAY_RESOURCES = [
    {"name": "rayjobs", "singularName": "rayjob", "namespaced": True, "kind": "RayJob"},
    {"name": "rayjobs/status", "singularName": "", "namespaced": True, "kind": "RayJob"},
    {"name": "rayservices", "singularName": "rayservice", "namespaced": True, "kind": "RayService"},
]
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: Any


@dataclass
class ApiState:
    requests: list[Request] = field(default_factory=list)
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> object
    # Status the RayJob shows on successive GETs after it was applied (the last one repeats).
    rayjob_statuses: list[dict[str, Any]] = field(default_factory=list)
    serve_kuberay: bool = True
    forbid: str = ""  # a path prefix answered 403
    lock: threading.Lock = field(default_factory=threading.Lock)

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method in ("PATCH", "POST", "PUT", "DELETE")]


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    }


class Handler(BaseHTTPRequestHandler):
    state: ApiState

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _send(self, code: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> Request:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        body = json.loads(raw) if raw else None
        request = Request(
            self.command, parts.path, parse_qs(parts.query), self.headers.get("Content-Type", ""), body
        )
        with self.state.lock:
            self.state.requests.append(request)
        return request

    def _discovery(self, path: str) -> Any:
        if path == "/version":
            return {"major": "1", "minor": "30", "gitVersion": "v1.30.0"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"]}
        if path == "/api/v1":
            return {
                "kind": "APIResourceList",
                "groupVersion": "v1",
                "resources": [dict(r, verbs=VERBS) for r in CORE_RESOURCES],
            }
        if path == "/apis":
            groups = []
            if self.state.serve_kuberay:
                version = {"groupVersion": "ray.io/v1", "version": "v1"}
                groups.append({"name": "ray.io", "versions": [version], "preferredVersion": version})
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        if path == "/apis/ray.io/v1" and self.state.serve_kuberay:
            return {
                "kind": "APIResourceList",
                "groupVersion": "ray.io/v1",
                "resources": [dict(r, verbs=VERBS) for r in RAY_RESOURCES],
            }
        return None

    def do_GET(self) -> None:
        request = self._record()
        found = self._discovery(request.path)
        if found is not None:
            return self._send(200, found)
        with self.state.lock:
            obj = self.state.objects.get(request.path)
            if obj is not None and obj["kind"] == "RayJob" and self.state.rayjob_statuses:
                obj["status"] = (
                    self.state.rayjob_statuses.pop(0)
                    if len(self.state.rayjob_statuses) > 1
                    else self.state.rayjob_statuses[0]
                )
        if obj is None:
            return self._send(404, _status(404, "NotFound", f"{request.path} not found"))
        self._send(200, obj)

    def do_PATCH(self) -> None:
        request = self._record()
        if self.state.forbid and request.path.startswith(self.state.forbid):
            return self._send(403, _status(403, "Forbidden", "user cannot patch resource"))
        obj = dict(request.body)
        obj["metadata"] = dict(obj["metadata"], uid=f"uid-{len(self.state.requests)}", resourceVersion="1")
        with self.state.lock:
            self.state.objects[request.path] = obj
        self._send(201, obj)

    def do_DELETE(self) -> None:
        request = self._record()
        with self.state.lock:
            obj = self.state.objects.pop(request.path, None)
        if obj is None:
            return self._send(404, _status(404, "NotFound", f"{request.path} not found"))
        self._send(200, _status(200, "Success", "deleted") | {"status": "Success"})
