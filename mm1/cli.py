"""`mm1 validate | run | submit | status | logs | render | serve | chat | model-info | data`.

User mistakes (a bad workflow file, a missing run folder) print one clear line on stderr and exit 2; a step
that fails for a reason the user controls (corrupt data, a missing file, a port in use, a lost cluster)
prints which step, why, what to do and where its full log is, and exits 1 (mm1.errors). Only genuine bugs show
a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mm1.config import Workflow, load
from mm1.errors import UserFacingError
from mm1.workflow.runner import StepFailed
from services.ingress import INGRESS_MODES

EXIT_USAGE = 2  # the command or its workflow is wrong
EXIT_FAILED = 1  # a step failed for a reason the user can act on (data, files, ports, cluster)


class UserError(UserFacingError):
    """A mistake in the command line the user can fix; printed without a traceback."""


def _load(args: argparse.Namespace) -> Workflow:
    return load(args.workflow, args.overrides)


def cmd_validate(args: argparse.Namespace) -> int:
    wf = _load(args)
    from mm1.workflow.sweep import candidates

    cands = candidates(wf)
    print(
        f"{args.workflow}: OK — workflow '{wf.name}', {len(cands)} candidate(s), backend {wf.cluster.backend}"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    wf = _load(args)
    if wf.cluster.backend != "local" and not args.here:
        raise UserError(
            f"{args.workflow}: cluster.backend is '{wf.cluster.backend}': use `mm1 submit` "
            "(or `mm1 run --here` to run it in this process anyway)"
        )
    from mm1.workflow.backends import LocalRay

    LocalRay().launch(
        wf, args.workflow, args.overrides, from_step=args.from_step, until=args.until, verbose=args.verbose
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from mm1 import storage

    if args.address or not (Path(args.target).exists() or storage.is_uri(args.target)):
        from mm1.workflow.jobs import job_status

        print(job_status(args.target, args.address))
        return 0
    from mm1.workflow.rundir import RunDir
    from mm1.workflow.runner import step_states
    from mm1.workflow.steps import STEP_NAMES

    rundir = RunDir(storage.parent(args.target), storage.name(args.target))
    if rundir.read_json("run.json") is None:
        raise UserError(
            f"{args.target}: not a run folder (no run.json); runs live under storage.root/<run name>"
        )
    print(f"run {rundir.uri}")
    print(f"{'step':<10} {'status':<18} {'wall s':>8}  headline")
    for row in step_states(rundir, STEP_NAMES):
        wall = f"{row['duration_s']:.1f}" if row["duration_s"] is not None else "-"
        headline = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["headline"].items()
        )
        print(f"{row['step']:<10} {row['status']:<18} {wall:>8}  {headline or row['error'] or ''}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    if args.address:  # the command line's address satisfies (and wins over) cluster.address
        args.overrides = [*args.overrides, f"cluster.address={args.address}"]
    wf = _load(args)
    if not args.k8s and not wf.cluster.address:
        raise UserError("no cluster address: pass --address http://HOST:8265 or set cluster.address")
    from mm1.workflow.backends import backend

    chosen = backend("k8s" if args.k8s else "ray")
    chosen.launch(wf, args.workflow, args.overrides, follow=not args.no_follow, log=print)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from mm1.workflow.jobs import job_logs

    job_logs(args.job, args.address, follow=args.follow)
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    wf = _load(args)
    from mm1.k8s.render import dump_all, render_job

    print(dump_all(render_job(wf, Path(args.workflow).read_text())))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from services.deploy import serve_checkpoint

    serve_checkpoint(args.checkpoint, host=args.host, port=args.port, name=args.name, ingress=args.ingress)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from services.client import chat

    print(chat(args.question, images=args.image, url=args.url, model=args.model, stream=args.stream))
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    from mm1.model.info import format_model_info
    from mm1.registry import PRESETS

    if args.preset != "all" and args.preset not in PRESETS:
        raise UserError(f"unknown preset '{args.preset}'; known presets: {', '.join(sorted(PRESETS))}, all")
    print(format_model_info(None if args.preset == "all" else args.preset))
    if args.freeze or args.lora_r:  # what a stage with this freezing and these adapters trains
        from mm1.config_sections import LoraConfig
        from mm1.model.info import format_trainable_info

        targets = [t for t in args.lora_targets.split(",") if t]
        lora = LoraConfig(r=args.lora_r, target_modules=targets, parts=args.lora_parts.split(","))
        freeze = [p for p in args.freeze.split(",") if p]
        try:
            print(format_trainable_info(None if args.preset == "all" else args.preset, freeze, lora))
        except ValueError as exc:
            raise UserError(str(exc)) from exc
    return 0


def cmd_data_shapes(args: argparse.Namespace) -> int:
    from mm1.data.shapes_cli import shapes_command

    shapes_command(args.out, seed=args.seed, scale=args.scale)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mm1", description="Train, evaluate and serve MM1 models on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_workflow(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("workflow", help="workflow YAML file")
        p.add_argument("overrides", nargs="*", help="KEY=VALUE overrides, e.g. pretrain.steps=50")
        return p

    with_workflow(sub.add_parser("validate", help="check a workflow file")).set_defaults(func=cmd_validate)
    run = with_workflow(sub.add_parser("run", help="run a workflow here (embedded Ray)"))
    run.add_argument("--from", dest="from_step", help="force this step and every later one to run")
    run.add_argument("--until", help="stop after this step")
    run.add_argument("--here", action="store_true", help="run a non-local workflow in this process")
    run.add_argument(
        "--verbose", action="store_true", help="show Ray's own logs here too (always in RUN/logs/ray.log)"
    )
    run.set_defaults(func=cmd_run)

    submit = with_workflow(sub.add_parser("submit", help="run a workflow on a Ray cluster or Kubernetes"))
    submit.add_argument("--address", help="Ray dashboard address, e.g. http://HOST:8265")
    submit.add_argument("--k8s", action="store_true", help="submit as a KubeRay RayJob")
    submit.add_argument("--no-follow", action="store_true", help="return once submitted")
    submit.set_defaults(func=cmd_submit)

    status = sub.add_parser("status", help="a run folder's steps, or a Ray job's state")
    status.add_argument("target", help="run folder (storage.root/NAME) or a job id with --address")
    status.add_argument("--address", help="Ray dashboard address for a job id")
    status.set_defaults(func=cmd_status)

    logs = sub.add_parser("logs", help="a submitted job's logs")
    logs.add_argument("job")
    logs.add_argument("--address", required=True)
    logs.add_argument("--follow", "-f", action="store_true")
    logs.set_defaults(func=cmd_logs)

    render = sub.add_parser("render", help="print Kubernetes manifests for a workflow")
    render_sub = render.add_subparsers(dest="target", required=True)
    with_workflow(render_sub.add_parser("k8s", help="ConfigMap + RayJob")).set_defaults(func=cmd_render)

    serve = sub.add_parser("serve", help="serve a checkpoint behind the OpenAI-compatible API")
    serve.add_argument("checkpoint")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--name", default="mm1", help="model name in /v1/models")
    serve.add_argument(
        "--ingress",
        choices=INGRESS_MODES,
        default="auto",
        help="HTTP ingress of a Ray this command starts: haproxy, Serve's Python proxy, or auto (haproxy "
        "when its binary is there)",
    )
    serve.set_defaults(func=cmd_serve)

    chat = sub.add_parser("chat", help="ask the endpoint a question, optionally about images")
    chat.add_argument("question")
    chat.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    chat.add_argument("--url", default="http://127.0.0.1:8000/v1")
    chat.add_argument("--model", default=None)
    chat.add_argument("--stream", action="store_true")
    chat.set_defaults(func=cmd_chat)

    from mm1.registry import PRESETS

    info = sub.add_parser("model-info", help="parameters, image tokens and FLOPs of a preset")
    info.add_argument("preset", help=" | ".join([*PRESETS, "all"]))
    info.add_argument("--freeze", default="", help="parts a stage freezes, e.g. vision,connector")
    info.add_argument("--lora-r", type=int, default=0, help="LoRA rank (0: off): adds a trainable table")
    info.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj", help="LoRA target_modules")
    info.add_argument("--lora-parts", default="llm", help="parts that get adapters")
    info.set_defaults(func=cmd_model_info)

    data = sub.add_parser("data", help="corpus tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    shapes = data_sub.add_parser("shapes", help="write the Shapes corpus in the real formats")
    shapes.add_argument("--out", required=True)
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--scale", type=float, default=1.0, help="multiply the default corpus sizes")
    shapes.set_defaults(func=cmd_data_shapes)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Overrides may also follow options (`mm1 run wf.yaml --until ingest pretrain.steps=5`): argparse has
    already matched the override list before it reads the option, so later KEY=VALUE words are added here."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or any(a.startswith("-") or "=" not in a for a in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def user_facing(exc: BaseException) -> UserFacingError | None:
    """The user-facing error behind `exc` (a failed step's cause; a Ray task's error re-raised on the
    driver, whose own text carries the remote traceback), or None for a bug."""
    while exc is not None:
        inner = getattr(exc, "cause", None)  # StepFailed's cause; ray.exceptions.RayTaskError's original
        if isinstance(inner, BaseException) and inner is not exc:
            if isinstance(exc, UserFacingError) and not isinstance(inner, UserFacingError):
                return exc
            exc = inner
            continue
        return exc if isinstance(exc, UserFacingError) else None
    return None


def report_failure(exc: BaseException) -> bool:
    """Print a user-facing failure as what failed, why, what to do and where the full log is; False for
    a bug (the caller lets its traceback through)."""
    error = user_facing(exc)
    if error is None:
        return False
    where = f"step '{exc.step}' failed: " if isinstance(exc, StepFailed) else ""
    print(f"error: {where}{error}", file=sys.stderr)
    if error.hint:
        print(f"  what to do: {error.hint}", file=sys.stderr)
    if isinstance(exc, StepFailed) and exc.log_uri:
        print(f"  full log: {exc.log_uri}", file=sys.stderr)
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        return args.func(args)
    except (UserFacingError, StepFailed) as exc:
        if not report_failure(exc):
            raise
        return EXIT_USAGE if isinstance(exc, UserFacingError) else EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
