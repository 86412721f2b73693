"""What the command line prints while it works, and the stats block after a run.

Three modes, chosen once per command:

- ``rich``: stderr is a terminal: a live progress line (the minimizer's max force falling
  towards ``ftol`` on a log scale, then the linear solves), drawn with rich.
- ``log``: stderr is not a terminal (a batch job's log file): plain timestamped lines, one per
  progress event.
- ``quiet`` (``-q``): nothing but errors.

Compilation is a stage of its own: while a task runs, the reporter listens to JAX's
compile events (``jax.monitoring``: tracing, lowering, backend compilation; only when jax is
already imported), shows "compiling" as soon as a function is being compiled and, with the
next progress event, how long it took (``compiled 3 function(s) in 4.9 s``), and counts
what the persistent compilation cache supplied.

The systems layer reports through ``progress(event, **fields)`` callables
(``progress("relax", step=..., max_force=..., energy=...)``, ``progress("solve", name=...,
iterations=..., residual=...)``); :meth:`Reporter.progress` is one.

Results (``validate``, ``inspect``, the stats block) go to stdout; progress and messages to
stderr, so that ``sensitivity inspect r.h5 > summary.txt`` captures just the summary.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

__all__ = ["Reporter", "stats_block", "format_value", "format_vectors"]

#: JAX's compile-stage duration events (jax._src.dispatch), and its persistent-cache hit event.
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_BACKEND_COMPILE = _COMPILE_EVENTS[-1]
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


def format_value(value: Any) -> str:
    """A short human form of a scalar for tables and log lines."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0 or not math.isfinite(value):
            return f"{value:g}"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.3e}"
        return f"{value:.6g}"
    if value is None:
        return "-"
    return str(value)


def format_vectors(columns) -> str:
    """Cell vectors (the columns of a box matrix) as ``(a, b), (c, d)``."""
    return ", ".join("(" + ", ".join(f"{e:.6g}" for e in column) + ")" for column in columns)


class Reporter:
    """Renders progress events and messages for one command.

    Args:
        mode: ``"rich"``, ``"log"`` or ``"quiet"``; ``None`` picks ``rich`` when ``stream`` is
            a terminal and ``log`` otherwise.
        verbosity: 0 default, 1+ with ``-v`` (every event, extra fields).
        stream: where progress goes (stderr).
    """

    def __init__(self, mode: str | None = None, verbosity: int = 0, stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stderr
        if mode is None:
            isatty = getattr(self.stream, "isatty", None)
            mode = "rich" if isatty is not None and isatty() else "log"
        if mode not in ("rich", "log", "quiet"):
            raise ValueError(f"unknown reporter mode {mode!r}")
        self.mode = mode
        self.verbosity = verbosity
        self.prefix = ""
        self._ftol: float | None = None
        self._first_force: float | None = None
        self._progress = None  # rich.progress.Progress while a task runs
        self._bar = None
        self._console = None
        self._compiling = False  # a compile burst is under way (since the last event)
        self._compile_s = 0.0
        self._compiled = 0
        self._cache_hits = 0

    # -- plain messages -----------------------------------------------------------------------

    @property
    def console(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.stream, highlight=False)
        return self._console

    def _stamp(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S")

    def info(self, message: str) -> None:
        """A progress message (not shown with -q)."""
        if self.mode == "quiet":
            return
        prefix = f"[{self.prefix}] " if self.prefix else ""
        if self.mode == "rich":
            from rich.markup import escape

            target = self._progress.console if self._progress is not None else self.console
            target.print(escape(prefix + message))
        else:
            print(f"{self._stamp()} {prefix}{message}", file=self.stream, flush=True)

    def detail(self, message: str) -> None:
        """A message shown only with -v."""
        if self.verbosity > 0:
            self.info(message)

    def warning(self, message: str) -> None:
        """Shown in every mode, even -q."""
        prefix = f"[{self.prefix}] " if self.prefix else ""
        text = f"warning: {prefix}{message}"
        if self.mode == "log":
            text = f"{self._stamp()} {text}"
        print(text, file=self.stream, flush=True)

    # -- progress of one task -------------------------------------------------------------

    @contextlib.contextmanager
    def task(self, label: str, *, ftol: float | None = None) -> Iterator["Reporter"]:
        """Progress context for one task: a live bar in rich mode, a prefix on log lines."""
        self.prefix = label
        self._ftol = ftol if ftol and ftol > 0 else None
        self._first_force = None
        if self.mode == "rich":
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=30),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.start()
            self._bar = self._progress.add_task(f"{label}: starting", total=1.0, status="")
        listening = self._listen_to_compiles()
        try:
            yield self
            self._end_compile_stage()
        finally:
            if listening:
                import jax.monitoring

                jax.monitoring.unregister_event_duration_listener(self._on_duration)
                jax.monitoring.unregister_event_listener(self._on_event)
            if self._progress is not None:
                self._progress.stop()
            self._progress = None
            self._bar = None
            self.prefix = ""

    # -- the compile stage ----------------------------------------------------------------

    def _listen_to_compiles(self) -> bool:
        if self.mode == "quiet" or "jax" not in sys.modules:
            return False  # never import jax just to report on it
        import jax.monitoring

        self._compiling, self._compile_s, self._compiled, self._cache_hits = False, 0.0, 0, 0
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        jax.monitoring.register_event_listener(self._on_event)
        return True

    def _on_duration(self, event: str, duration: float, **kwargs: Any) -> None:
        if event not in _COMPILE_EVENTS:
            return
        self._compile_s += float(duration)
        if event == _BACKEND_COMPILE:
            self._compiled += 1
        if not self._compiling:  # the first stage of a burst has just finished
            self._compiling = True
            if self._progress is not None:
                self._progress.update(self._bar, description=f"{self.prefix}: compiling", status="")
            if self.mode == "log" or self.verbosity > 0:
                self.info("compiling")

    def _on_event(self, event: str, **kwargs: Any) -> None:
        if event == _CACHE_HIT:
            self._cache_hits += 1

    def _end_compile_stage(self) -> None:
        """Report the compile burst that ended (called before any other progress event)."""
        if not self._compiling:
            return
        self._compiling = False
        parts = [f"compiled {self._compiled} function(s) in {self._compile_s:.2f} s"]
        if self._cache_hits:
            parts.append(f"{self._cache_hits} from the compilation cache")
        self._compile_s, self._compiled, self._cache_hits = 0.0, 0, 0
        self.info(", ".join(parts))

    def progress(self, event: str, **fields: Any) -> None:
        """The ``progress(event, **fields)`` callable handed to the systems layer."""
        if self.mode == "quiet":
            return
        self._end_compile_stage()
        if event == "relax":
            self._relax(fields)
        elif event == "solve":
            self._solve(fields)
        elif event == "jacobian" and self._progress is not None and self.verbosity == 0:
            columns, total = fields.get("columns", 0), fields.get("of") or 1
            self._progress.update(self._bar, completed=min(columns / total, 1.0),
                                  description=f"{self.prefix}: jacobian {fields.get('name')}",
                                  status=f"{columns}/{total} columns")
        elif self.mode == "log" or self.verbosity > 0:
            self.info(f"{event} " + " ".join(f"{k}={format_value(v)}" for k, v in fields.items()))
        elif self._progress is not None:
            self._progress.update(self._bar, description=f"{self.prefix}: {event}", status="")

    def _relax(self, fields: Mapping[str, Any]) -> None:
        step = fields.get("step")
        force = fields.get("max_force")
        energy = fields.get("energy")
        text = f"relax step {step}: max|F| {format_value(force)}"
        if self._ftol is not None:
            text += f" (ftol {self._ftol:.0e})"
        if energy is not None:
            text += f", E {format_value(energy)}"
        if self._progress is None:
            self.info(text)
            return
        if isinstance(force, (int, float)) and force > 0:
            if self._first_force is None:
                self._first_force = max(float(force), (self._ftol or 0) * 10)
            fraction = 0.0
            if self._ftol is not None and self._first_force > self._ftol:
                fraction = math.log(self._first_force / force) / math.log(self._first_force / self._ftol)
            self._progress.update(
                self._bar,
                completed=min(max(fraction, 0.0), 1.0),
                description=f"{self.prefix}: relax",
                status=f"step {step}  max|F| {force:.2e}",
            )
        if self.verbosity > 0:
            self.info(text)

    def _solve(self, fields: Mapping[str, Any]) -> None:
        name = fields.get("name", "?")
        parts = [f"solve {name}:"]
        if "iterations" in fields:
            parts.append(f"{fields['iterations']} iterations,")
        if "residual" in fields:
            parts.append(f"residual {format_value(fields['residual'])}")
        if fields.get("converged") is False:
            parts.append("(NOT converged)")
        if self._progress is not None:
            self._progress.update(self._bar, description=f"{self.prefix}: solve {name}", status="")
        self.info(" ".join(parts))


def _get(mapping: Mapping | None, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if mapping is not None and key in mapping and mapping[key] is not None:
            return mapping[key]
    return default


def stats_block(
    relaxation: Mapping[str, Any],
    responses: Mapping[str, Mapping[str, Any]],
    timings: Mapping[str, Any] | None = None,
    *,
    rattlers: int | None = None,
    n: int | None = None,
    result_path: str | None = None,
    title: str | None = None,
) -> str:
    """The LAMMPS-like summary printed after a run (and by ``inspect``).

    Args:
        relaxation: the minimizer report (steps, energy, max_force, stop_reason, converged,
            minimizer, ftol, etol, max_steps, time_s, time_compile_s).
        responses: ``{theta name: attrs}`` with solver, iterations, residual, converged.
        timings: wall-clock timings (time_relax_s, time_sensitivity_s, time_compile_s, ...).
    """
    lines = []
    if title:
        lines.append(title)
    kind = _get(relaxation, "minimizer", "kind", default="minimizer")
    kind_name = {"fire": "FIRE", "gradient_descent": "gradient descent"}.get(kind, kind)
    lines.append(f"Minimization stats ({kind_name}):")
    reason = _get(relaxation, "stop_reason", default="?")
    ftol = _get(relaxation, "ftol")
    etol = _get(relaxation, "etol")
    criteria = {
        "ftol": f"max |force| <= ftol {format_value(ftol)}" if ftol is not None else "max |force| <= ftol",
        "etol": f"relative energy change <= etol {format_value(etol)}" if etol else "energy tolerance",
        "max_steps": "max_steps reached (NOT converged)",
        "nonfinite": "non-finite force (NOT converged)",
    }
    rows = [("Stopping criterion", f"{reason}: {criteria.get(reason, reason)}")]
    steps = _get(relaxation, "steps")
    max_steps = _get(relaxation, "max_steps")
    if steps is not None:
        rows.append(("Steps", f"{steps}" + (f" of max {max_steps}" if max_steps else "")))
    if _get(relaxation, "energy") is not None:
        rows.append(("Energy final", f"{float(relaxation['energy']):.12g}"))
    if _get(relaxation, "max_force") is not None:
        rows.append(("Max |force| final", f"{float(relaxation['max_force']):.3e}"))
    converged = _get(relaxation, "converged")
    if converged is not None:
        rows.append(("Converged", format_value(bool(converged))))
    if rattlers is not None:
        rows.append(("Rattlers", f"{rattlers}" + (f" of {n} particles" if n else "")))
    lines += [f"  {k:<24} = {v}" for k, v in rows]

    if responses:
        solvers = {str(a["solver"]) for a in responses.values() if _get(a, "solver") is not None}
        lines.append(f"Sensitivity stats (solver {', '.join(sorted(solvers)) or '-'}):")
        width = max(12, *(len(name) for name in responses))
        lines.append(f"  {'theta':<{width}}  {'iterations':>10}  {'residual':>10}  converged")
        for name, attrs in responses.items():
            iterations = _get(attrs, "iterations", default="-")
            residual = _get(attrs, "residual", "residual_norm")
            ok = _get(attrs, "converged")
            lines.append(
                f"  {name:<{width}}  {format_value(iterations):>10}  "
                f"{(f'{float(residual):.2e}' if residual is not None else '-'):>10}  "
                f"{format_value(bool(ok)) if ok is not None else '-'}"
            )

    if timings:
        shown = []
        order = ["time_relax_s", "time_sensitivity_s", "time_compile_s"]
        order += [k for k in timings if k not in order and k != "time_total_s"] + ["time_total_s"]
        for key in order:
            value = _get(timings, key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                label = key.removeprefix("time_").removesuffix("_s")
                shown.append(f"{label} {float(value):.3g} s")
        if shown:
            lines.append("Timings: " + ", ".join(shown))
    if result_path:
        lines.append(f"Result: {result_path}")
    return "\n".join(lines)
