"""What a person sees while a workflow runs: our own lines and training progress, Ray's chatter in a file.

Ray streams every worker's stdout and stderr to the driver and prints it with a prefix: Ray Train's reports,
Ray Data's plans, the raylet's warnings, C++ error-level lines that are harmless (e.g. about an actor's
constructor arguments). `Console.install` takes that stream over: the lines training workers write for people
(`[stage:run] step N/M loss ...`, mm1.train.loop) become one progress line each -- a live bar on a terminal,
plain lines otherwise, with an ETA -- and everything else goes to the run folder's `logs/ray.log` (and to the
console too with `--verbose`). Ray's own driver-side INFO logs go to the same file.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

# The line rank 0 writes after each step (mm1.train.loop.step_line); parsed here, readable everywhere else.
STEP_LINE = re.compile(
    r"^\[(?P<label>[^\]]+)\] step (?P<step>\d+)/(?P<steps>\d+) loss (?P<loss>\S+) lr (?P<lr>\S+) "
    r"tok/s (?P<tps>\d+) wait (?P<wait>\S+)"
)
# Other lines our workers write for people ("[pretrain:base] resumed at step 10; ...").
OWN_LINE = re.compile(r"^\[(pretrain|sft|evaluate|ingest)[:\]]")
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.serve", "ray.tune")


def step_line(label: str, step: int, steps: int, row: dict[str, Any]) -> str:
    """The progress line of one training step (what STEP_LINE reads back)."""
    return (
        f"[{label}] step {step}/{steps} loss {row['loss']:.4f} lr {row['lr']:.2e} "
        f"tok/s {row['tokens_per_s']:.0f} wait {row['data_wait_fraction']:.1%}"
    )


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class RunProgress:
    steps: int
    step: int = 0
    loss: float = float("nan")
    tokens_per_s: float = 0.0
    first: tuple[int, float] | None = None  # (step, time) of the first step seen: ETA from the pace since
    done: bool = False

    def eta(self, now: float) -> str:
        if self.first is None or self.step <= self.first[0]:
            return "?"
        pace = (now - self.first[1]) / (self.step - self.first[0])
        return _clock(pace * (self.steps - self.step))


@dataclass
class Console:
    """One per `mm1 run`: lines from the steps (`line`), progress from the workers, Ray's logs to a file."""

    log_path: Path | None = None
    verbose: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    live: bool | None = None  # a live bar (a terminal) or plain lines; None: ask `out`
    runs: dict[str, RunProgress] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _status: str = ""
    _file: TextIO | None = None
    _clock: Callable[[], float] = time.monotonic
    _replaced: list = field(default_factory=list)  # Ray's own printer, put back by close()
    _native_stderr: tuple[int, TextIO] | None = (
        None  # (the terminal's descriptor, Python's stderr) to restore
    )

    def __post_init__(self) -> None:
        if self.live is None:
            self.live = bool(getattr(self.out, "isatty", lambda: False)())
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.log_path, "a", buffering=1)  # noqa: SIM115 (open for the run's life)

    # -- what the steps say ---------------------------------------------------------------------------
    def line(self, text: str) -> None:
        """A line of our own (the runner's and the steps' log function)."""
        with self._lock:
            self._write(text)

    # -- what the workers say -------------------------------------------------------------------------
    def worker_lines(self, lines: list[str], source: str, is_err: bool) -> None:
        """Lines a Ray worker wrote: progress is ours to show, the rest goes to the log file."""
        with self._lock:
            for text in lines:
                match = STEP_LINE.match(text)
                if match:
                    self._progress(match)
                elif OWN_LINE.match(text):
                    self._write(text)
                else:
                    self._to_file(f"({source}) {text}")
                    if self.verbose:
                        self._write(f"({source}) {text}", stream=sys.stderr if is_err else None)

    def _progress(self, match: re.Match) -> None:
        label, step, steps = match["label"], int(match["step"]), int(match["steps"])
        now = self._clock()
        run = self.runs.setdefault(label, RunProgress(steps))
        if run.first is None or step <= run.step:  # a first step, or a restart from a checkpoint
            run.first = (step, now)
        run.step, run.steps, run.loss = step, steps, float(match["loss"])
        run.tokens_per_s = float(match["tps"])
        run.done = step >= steps
        text = f"{match.group(0)} ETA {run.eta(now)}" if not run.done else match.group(0)
        self._to_file(text)
        if not self.live or run.done:
            self._write(text)  # plain lines off a terminal; a run's last step stays on screen either way
        if self.live:
            self._draw()

    # -- output ---------------------------------------------------------------------------------------
    def _status_line(self) -> str:
        now = self._clock()
        parts = []
        for label, run in self.runs.items():
            if run.done:
                continue
            filled = int(10 * run.step / max(run.steps, 1))
            bar = "#" * filled + "." * (10 - filled)
            parts.append(f"[{label}] {run.step}/{run.steps} {bar} loss {run.loss:.3f} ETA {run.eta(now)}")
        return " | ".join(parts)

    def _draw(self) -> None:
        status = self._status_line()
        self.out.write("\r\x1b[K" + status)
        self.out.flush()
        self._status = status

    def _write(self, text: str, stream: TextIO | None = None) -> None:
        if self.live and self._status:
            self.out.write("\r\x1b[K")
        (stream or self.out).write(text + "\n")
        (stream or self.out).flush()
        if self.live and self._status:
            self._draw()

    def _to_file(self, text: str) -> None:
        if self._file is not None:
            self._file.write(text + "\n")

    # -- taking Ray's output over ---------------------------------------------------------------------
    def install(self) -> bool:
        """Receive the workers' output instead of Ray's printer, and send Ray's driver-side logs to the
        file. False (and Ray's own printing kept) where this Ray does not offer the hook."""
        try:
            from ray._private import worker as ray_worker
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
        except ImportError:
            return False
        if not getattr(ray_worker.global_worker, "connected", False):
            return False

        def receive(data: dict[str, Any]) -> None:
            source = data.get("actor_name") or data.get("task_name") or f"pid={data.get('pid')}"
            self.worker_lines(list(data.get("lines") or ()), str(source), bool(data.get("is_err")))

        self._replaced = [pair for pair in dispatcher.handlers if pair[0] == "ray_print_logs"]
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("mm1_console", receive)
        self._quiet_ray_loggers()
        if not self.verbose:
            self._redirect_native_stderr()
        return True

    def _redirect_native_stderr(self) -> None:
        """Ray's C++ core in this process logs straight to file descriptor 2 (e.g. an error-level line when
        an actor's constructor arguments sit in the object store, harmless here): point descriptor 2 at
        the log file and keep Python's sys.stderr on the terminal."""
        if self._file is None:
            return
        try:
            terminal = os.dup(2)
            sys.stderr.flush()
            os.dup2(self._file.fileno(), 2)
        except (OSError, ValueError):  # no real descriptor 2 (an embedding host): leave things as they are
            return
        self._native_stderr = (terminal, sys.stderr)
        sys.stderr = os.fdopen(os.dup(terminal), "w", buffering=1, errors="replace")

    def _quiet_ray_loggers(self) -> None:
        # Ray Data and Serve add their console handlers when first imported (Serve's replaces any handler
        # already there): import them now, so they are quieted too.
        for module in ("ray.data", "ray.serve"):
            try:
                importlib.import_module(module)
            except ImportError:
                pass
        if not self.verbose:  # transformers' "Loading weights" bars (the deploy step's parity gate)
            try:
                from transformers.utils import logging as transformers_logging

                transformers_logging.disable_progress_bar()
            except ImportError:
                pass
        logging.getLogger("ray").setLevel(
            logging.INFO
        )  # what ray.init(logging_level=...) raised: the file gets INFO
        for name in RAY_LOGGERS:
            logger = logging.getLogger(name)
            for handler in logger.handlers:
                if isinstance(handler, logging.StreamHandler) and not isinstance(
                    handler, logging.FileHandler
                ):
                    handler.setLevel(logging.INFO if self.verbose else logging.ERROR)
            if self._file is not None and not any(getattr(h, "mm1", False) for h in logger.handlers):
                to_file = logging.StreamHandler(self._file)
                to_file.mm1 = True  # type: ignore[attr-defined]
                to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
                logger.addHandler(to_file)

    def close(self) -> None:
        try:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

            dispatcher.remove_handler("mm1_console")
            for name, handler in self._replaced:
                dispatcher.add_handler(name, handler)
        except ImportError:
            pass
        self._replaced = []
        if self._native_stderr is not None:
            terminal, python_stderr = self._native_stderr
            self._native_stderr = None
            sys.stderr.flush()
            redirected, sys.stderr = sys.stderr, python_stderr
            os.dup2(terminal, 2)
            os.close(terminal)
            redirected.close()
        with self._lock:
            if self.live and self._status:
                self.out.write("\r\x1b[K")
                self.out.flush()
                self._status = ""
            if self._file is not None:
                self._file.close()
                self._file = None
