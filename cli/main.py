"""The ``sensitivity`` command: relax packings, differentiate them, batch sweeps on Slurm.

A thin click layer over :mod:`systems`: each command turns its arguments into library calls and
renders the result. Nothing heavy is imported at module level (no jax, jax-md, matplotlib or
``systems`` physics), so ``sensitivity --help`` is instant; commands import what they need.

Exit codes: 0 success; 1 a numerical failure (a relaxation or linear solve that did not
converge, a failed audit); 2 a usage or input mistake (one line naming the fix; ``--debug``
shows the traceback); 74 a storage failure (disk full, read-only file system, permission
denied: one line naming the path); 143 / 130 when stopped by SIGTERM / Ctrl-C.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from sensitivity.systems.manifest import MANIFEST_NAME, find_tasks, write_manifest
from sensitivity.systems.config import EXAMPLE_CONFIG, ConfigError, LoadedConfig, Task, dump_yaml, load_config

EXIT_OK, EXIT_NUMERICAL, EXIT_USAGE = 0, 1, 2
EXIT_STORAGE = 74  # EX_IOERR: the environment refused a write (disk full, read-only, ...)
EXIT_SIGTERM, EXIT_SIGINT = 128 + signal.SIGTERM, 128 + signal.SIGINT

EPILOG = f"""\b
Quick start:
  sensitivity generate --n 256 --dim 2 --phi 0.9 --seed 0 -o packing.h5
  sensitivity run config.yaml          # writes out/sensitivity.h5 and plots
  sensitivity inspect out/sensitivity.h5

\b
Example config (paths are relative to the config file's folder):
{EXAMPLE_CONFIG}
\b
Batch: a sweep expands into numbered tasks (out/task-0000, ...); `run` without
--task-index runs them in turn, with it (or with SLURM_ARRAY_TASK_ID set) one;
finished tasks are skipped, so rerunning resumes. `submit` writes and sbatch-es
an array job, one element per unfinished task.

\b
Environment:
  SENSITIVITY_CACHE_DIR       JAX compilation cache (default
                              $XDG_CACHE_HOME/sensitivity/jax or ~/.cache/...;
                              'off' disables; JAX_COMPILATION_CACHE_DIR also works)
  JAX_PLATFORMS=cpu           force the CPU even where a GPU is visible
  XLA_PYTHON_CLIENT_PREALLOCATE=false
                              on a shared GPU: do not reserve 75% of its memory
                              (submit's scripts set it)

\b
GPU: pip install 'sensitivity[cuda]' (jax[cuda12]); the same commands then run
on the GPU. Exit codes: 0 ok, 1 not converged, 2 usage or input error,
74 storage error (disk full, read-only, permission denied), 143/130 stopped
by SIGTERM/SIGINT.
"""


# ---------------------------------------------------------------------------------------------
# Shared state, options and error handling
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class State:
    verbose: int = 0
    quiet: bool = False
    debug: bool = False
    cache_dir: str | None = None
    no_cache: bool = False
    json: bool = False

    def reporter(self):
        from ._report import Reporter

        return Reporter("quiet" if self.quiet else None, self.verbose)


def _state(ctx: click.Context | None = None) -> State:
    ctx = ctx or click.get_current_context()
    return ctx.find_root().ensure_object(State)


def _store(name: str):
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        state = _state(ctx)
        if name == "verbose":
            state.verbose += value or 0
        elif value not in (None, False):
            setattr(state, name, value)
        return value

    return callback


def common_options(function):
    """-v/-q/--debug, accepted before or after the command name."""
    function = click.option(
        "--debug", is_flag=True, expose_value=False, callback=_store("debug"),
        help="Show full tracebacks.",
    )(function)
    function = click.option(
        "-q", "--quiet", is_flag=True, expose_value=False, callback=_store("quiet"),
        help="Print nothing but errors.",
    )(function)
    function = click.option(
        "-v", "--verbose", count=True, expose_value=False, callback=_store("verbose"),
        help="More detail (every progress event).",
    )(function)
    return function


def json_option(function):
    """--json: one JSON object on stdout (see :func:`emit_json`) instead of the text."""
    return click.option(
        "--json", "json_output", is_flag=True, expose_value=False, callback=_store("json"),
        help="Print one JSON object on stdout (the same fields as the text) instead of the text.",
    )(function)


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _json_ready(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def emit_json(payload: Any) -> None:
    """The one JSON object a ``--json`` command prints on stdout: numpy values as numbers and
    lists, paths as strings, NaN and infinities as null (strict JSON)."""
    click.echo(json.dumps(_json_ready(payload), indent=1))


def cache_options(function):
    function = click.option(
        "--no-cache", is_flag=True, expose_value=False, callback=_store("no_cache"),
        help="Do not use the persistent JAX compilation cache.",
    )(function)
    function = click.option(
        "--cache-dir", type=click.Path(file_okay=False), envvar="SENSITIVITY_CACHE_DIR",
        expose_value=False, callback=_store("cache_dir"),
        help="JAX compilation cache folder [env SENSITIVITY_CACHE_DIR; default "
        "~/.cache/sensitivity/jax].",
    )(function)
    return function


def config_options(function):
    """CONFIG, --set and --output, shared by run, validate, check and submit."""
    function = click.option(
        "-o", "--output", type=click.Path(file_okay=False), default=None,
        help="Output folder (replaces output.directory; relative to the current folder).",
    )(function)
    function = click.option(
        "--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
        help="Override a config value (a YAML scalar or [list]); repeatable. "
        "E.g. --set minimizer.ftol=1e-13 --set sweep.seed=[0,1,2].",
    )(function)
    function = click.argument("config", type=click.Path(dir_okay=False))(function)
    return function


class _LineError(click.ClickException):
    """An error shown as ``error: ...`` lines, no traceback."""

    def show(self, file=None) -> None:
        file = file or sys.stderr
        for line in self.message.splitlines() or [""]:
            click.echo(f"error: {line}", file=file)


class UserError(_LineError):
    """A usage or input mistake: one line per mistake, exit code 2."""

    exit_code = EXIT_USAGE


class NumericalFailure(_LineError):
    """A numerical failure (not converged): exit code 1."""

    exit_code = EXIT_NUMERICAL


class StorageFailure(_LineError):
    """The environment refused a write (disk full, read-only, permission): exit code 74."""

    exit_code = EXIT_STORAGE


_FAILURE_CLASSES = {EXIT_USAGE: UserError, EXIT_NUMERICAL: NumericalFailure,
                    EXIT_STORAGE: StorageFailure}


def _input_error_types() -> tuple[type, ...]:
    from sensitivity.systems import InputError  # the standard library only: no jax

    from sensitivity.systems.slurm import SlurmError

    return (ConfigError, InputError, SlurmError)


def _convergence_error_types() -> tuple[type, ...]:
    from sensitivity.systems import ConvergenceError

    types: list[type] = [ConvergenceError]
    if "sensitivity" in sys.modules:  # only then can the engine have raised one
        error = getattr(sys.modules["sensitivity"], "LinearSolveError", None)
        if isinstance(error, type):
            types.append(error)
    return tuple(types)


def translate_error(error: BaseException) -> click.ClickException | None:
    """The CLI form of an exception from a command (None: not ours to translate)."""
    if isinstance(error, click.ClickException):
        return error
    from sensitivity.systems import StorageError  # the standard library only: no jax

    if isinstance(error, StorageError):
        return StorageFailure(str(error))
    if isinstance(error, _input_error_types()):
        return UserError(str(error))
    convergence = _convergence_error_types()
    if convergence and isinstance(error, convergence):
        return NumericalFailure(" ".join(str(error).split()))
    return None


class SensitivityGroup(click.Group):
    """Turns library errors into one-line messages and exit codes (unless --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as error:
            if _state(ctx).debug:
                raise
            translated = translate_error(error)
            if translated is not None:
                raise translated from None
            message = " ".join(str(error).split()) or type(error).__name__
            raise NumericalFailure(
                f"unexpected {type(error).__name__}: {message} (rerun with --debug for the "
                "traceback, and report it)"
            ) from None


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from sensitivity.systems.versions import package_version as version

    own = version("sensitivity")
    others = ", ".join(f"{name} {version(name)}" for name in ("jax", "jaxlib", "jax-md"))
    click.echo(f"sensitivity {own} ({others}; python {sys.version.split()[0]})")
    ctx.exit()


@click.group(
    cls=SensitivityGroup,
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
    help="Show the versions of sensitivity, jax and jax-md, and exit.",
)
@common_options
def main() -> None:
    """Sensitivity of particle packings: relax a packing to its energy minimum x*, then
    compute dx*/dtheta for chosen parameters theta (diameters, energy scale, box) by implicit
    differentiation, for single runs, sweeps and Slurm job arrays."""


# ---------------------------------------------------------------------------------------------
# Helpers shared by the commands
# ---------------------------------------------------------------------------------------------


def _load(config: str, overrides: Sequence[str], output: str | None, *, check_files=True) -> LoadedConfig:
    return load_config(config, overrides, output=output, check_files=check_files)


def _selected_index(task_index: int | None) -> int | None:
    if task_index is not None:
        return task_index
    env = os.environ.get("SLURM_ARRAY_TASK_ID")
    if env is None or env == "":
        return None
    try:
        return int(env)
    except ValueError:
        raise UserError(
            f"SLURM_ARRAY_TASK_ID = {env!r} is not a task number; pass --task-index N"
        ) from None


def _select_tasks(loaded: LoadedConfig, task_index: int | None) -> list[Task]:
    index = _selected_index(task_index)
    if index is None:
        return list(loaded.tasks)
    return [loaded.task(index)]


def cache_directory(state: State) -> Path | None:
    """Where JAX's persistent compilation cache lives (None: off)."""
    if state.no_cache:
        return None
    if state.cache_dir is not None:
        if state.cache_dir.strip().lower() in ("", "off", "none", "0", "false"):
            return None
        return Path(state.cache_dir).expanduser()
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sensitivity" / "jax"


def setup_jax(state: State, reporter=None) -> None:
    """Import jax (64-bit) and turn the persistent compilation cache on."""
    import jax

    jax.config.update("jax_enable_x64", True)
    directory = cache_directory(state)
    if directory is None:
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if reporter is not None:
            reporter.warning(f"compilation cache off: cannot create {directory} ({error})")
        return
    jax.config.update("jax_compilation_cache_dir", str(directory))
    # Cache every compilation: on small packings each one takes well under JAX's 1 s default.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    with contextlib.suppress(AttributeError, KeyError, ValueError):
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if reporter is not None:
        reporter.detail(f"JAX compilation cache: {directory}")


def task_state(task: Task):
    """The :class:`systems.tasks.TaskStatus` of a task (stdlib only: no jax, no h5py)."""
    from sensitivity.systems.tasks import task_status

    return task_status(task.directory, task.config)


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM (Slurm's time limit) or SIGINT to stop cleanly."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """SIGTERM and SIGINT as :class:`Terminated`, and remembered.

    The handler raises in whatever the main thread runs, so cleanup handlers run. Python drops
    an exception raised inside a destructor or weakref callback ("Exception ignored in ..."),
    so the signal is also recorded: :meth:`check` raises it again at the points where a task
    would be declared complete and between tasks, and a command that received one never
    exits 0.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame):
        if self.signum is None:
            self.signum = signum
        raise Terminated(signum)

    def check(self) -> None:
        """Raise :class:`Terminated` if a signal arrived (even one whose exception was lost)."""
        if self.signum is not None:
            raise Terminated(self.signum)

    def __enter__(self) -> "StopSignals":
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[signum] = signal.signal(signum, self._handler)
            except ValueError:  # not the main thread: nothing to install
                break
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def stop_on_sigterm() -> StopSignals:
    """Context manager turning SIGTERM/SIGINT into :class:`Terminated` (see StopSignals)."""
    return StopSignals()


def _result_record(path: Path) -> dict:
    """What the stats block shows, as data (``--json``)."""
    from sensitivity.systems.io import read_result

    result = read_result(path)
    return {
        "result": str(path),
        "converged": bool(result.converged),
        "n": result.system.n,
        "dim": result.system.dim,
        "rattlers": int(sum(bool(r) for r in result.rattlers)),
        "relaxation": result.relaxation,
        "responses": {name: dict(r.get("attrs", {})) for name, r in result.responses.items()},
        "timings": result.timings,
    }


def _task_record(task: Task, status: str, code: int = EXIT_OK, message: str = "") -> dict:
    record = {"index": task.index, "label": task.label, "directory": str(task.directory),
              "status": status, "exit_code": code}
    if message:
        record["message"] = message
    written = status in ("done", "skipped") or code == EXIT_NUMERICAL  # not converged: written
    if written and task.result_path.is_file():
        with contextlib.suppress(Exception):
            record.update(_result_record(task.result_path))
    return record


def _stats_from_result(path: Path, *, title: str | None = None) -> tuple[str, bool]:
    """The stats block of a result file, and whether everything converged."""
    from sensitivity.systems.io import read_result

    from ._report import stats_block

    result = read_result(path)
    responses = {name: dict(r.get("attrs", {})) for name, r in result.responses.items()}
    rattlers = int(sum(bool(r) for r in result.rattlers))
    text = stats_block(
        result.relaxation,
        responses,
        result.timings,
        rattlers=rattlers,
        n=result.system.n,
        result_path=str(path),
        title=title,
    )
    return text, bool(result.converged)


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


@main.command(short_help="Relax and differentiate the packing(s) of a config.")
@config_options
@click.option(
    "--task-index", type=click.IntRange(min=0), default=None,
    help="Run only this task of the sweep [default: $SLURM_ARRAY_TASK_ID; unset: every task].",
)
@click.option("--overwrite", is_flag=True, help="Recompute every task, also the complete ones.")
@click.option("--keep-failed", is_flag=True,
              help="Count tasks that finished without converging as done (do not recompute them).")
@json_option
@cache_options
@common_options
def run(config: str, overrides: tuple[str, ...], output: str | None, task_index: int | None,
        overwrite: bool, keep_failed: bool) -> None:
    """Relax the packing(s) of CONFIG and compute their sensitivities.

    Writes OUTPUT/sensitivity.h5 (the relaxed packing, dx*/dtheta for every theta, rattlers,
    the resolved config and provenance), OUTPUT/config.yaml, plots and, last,
    OUTPUT/complete.json. A sweep writes one folder per task (OUTPUT/task-0000, ...) and
    OUTPUT/sweep.json. A task is skipped only when it is complete: converged (or failed, with
    --keep-failed), for this config and these input files (SHA-256), every file in place.
    """
    state = _state()
    reporter = state.reporter()
    loaded = _load(config, overrides, output)
    tasks = _select_tasks(loaded, task_index)
    write_manifest(loaded)

    todo = []
    records: dict[int, dict] = {}  # --json
    for task in tasks:
        status = task_state(task)
        if not overwrite and status.finished(keep_failed):
            what = ("complete result exists" if status.state == "done"
                    else f"failed earlier ({status.reason}), kept by --keep-failed")
            reporter.info(f"{task.label}: skipped, {what} ({task.directory})")
            if state.json:
                records[task.index] = _task_record(task, "skipped")
            continue
        if not overwrite and status.state not in ("missing", "done"):
            reporter.info(f"{task.label}: {status.state} ({status.reason}); computing it")
        todo.append(task)
    if not todo:
        reporter.info(f"nothing to do: all {len(tasks)} task(s) complete (--overwrite recomputes)")
        if state.json:
            emit_json({"config": str(loaded.path), "converged": True, "failed": 0,
                       "tasks": [records[i] for i in sorted(records)]})
        return

    started = time.perf_counter()
    setup_jax(state, reporter)
    from sensitivity.systems.pipeline import run_task

    reporter.info(f"imported jax and the physics in {time.perf_counter() - started:.2f} s")

    failures: dict[int, tuple[int, str]] = {}
    single = len(todo) == 1 and len(loaded.tasks) == 1
    current = None
    ran = 0
    signals = stop_on_sigterm()
    try:
        with signals:
            for task in todo:
                signals.check()
                current = task
                code, message = _run_one(task, loaded, run_task, reporter, state, signals)
                current = None
                ran += 1
                if code != EXIT_OK:
                    failures[task.index] = (code, message)
                if state.json:
                    records[task.index] = _task_record(
                        task, "done" if code == EXIT_OK else "failed", code, message)
                if code == EXIT_STORAGE:
                    break  # a full or read-only disk fails every later task the same way
            signals.check()
    except (Terminated, KeyboardInterrupt) as stop:
        signum = getattr(stop, "signum", None) or signals.signum or signal.SIGINT
        name = signal.Signals(signum).name
        which = f"({current.label}) " if current is not None and len(loaded.tasks) > 1 else ""
        reporter.warning(
            f"stopped by {name}: the running task {which}is not complete and will be computed "
            "again when you rerun the same command (complete tasks are skipped)"
        )
        sys.exit(128 + signum)
    elapsed = time.perf_counter() - started
    done = ran - len(failures)
    if len(todo) > 1:
        per_task = elapsed / max(ran, 1)
        reporter.info(f"{done} of {len(todo)} task(s) done in {elapsed:.1f} s ({per_task:.2f} s per task)")
    if state.json:
        emit_json({"config": str(loaded.path), "converged": not failures, "failed": len(failures),
                   "elapsed_s": elapsed, "tasks": [records[i] for i in sorted(records)]})
    if failures:
        code = max(failures.values(), key=lambda item: (item[0] == EXIT_STORAGE, item[0]))[0]
        failure = _FAILURE_CLASSES.get(code, NumericalFailure)
        if single:
            raise failure(next(iter(failures.values()))[1])
        lines = [f"task {i}: {m}" for i, (c, m) in sorted(failures.items())]
        not_started = len(todo) - ran
        raise failure(f"{len(failures)} of {len(todo)} task(s) failed:\n" + "\n".join(lines)
                      + (f"\n{not_started} task(s) not started" if not_started > 0 else ""))


def _run_one(task: Task, loaded: LoadedConfig, run_task, reporter, state: State,
             signals: StopSignals) -> tuple[int, str]:
    """Run one task in its folder (:func:`systems.tasks.run_in_folder`, which keeps the folder
    honest); returns (exit code, message) and never raises for a task's own failure."""
    from sensitivity.systems import ConvergenceError, InputError, StorageError, storage_error
    from sensitivity.systems.tasks import run_in_folder

    label = task.label if len(loaded.tasks) > 1 else Path(loaded.path).name

    def run(config, directory):
        reporter.info(f"start: {config['system']['path']} -> {directory}")
        return run_task(config, directory, progress=reporter.progress, config_text=loaded.text)

    try:
        with reporter.task(label, ftol=task.config["minimizer"]["ftol"]):
            outcome = run_in_folder(task.config, task.directory, run,
                                    before_complete=signals.check,
                                    not_converged_code=EXIT_NUMERICAL)
    except StorageError as error:
        if state.debug:
            raise
        return EXIT_STORAGE, str(error)
    except OSError as error:  # a write outside the atomic writer (a figure): same story
        if state.debug:
            raise
        return EXIT_STORAGE, str(storage_error(error.filename or task.directory, error))
    except InputError as error:
        if state.debug:
            raise
        return EXIT_USAGE, str(error)
    except ConvergenceError as error:
        if state.debug:
            raise
        return EXIT_NUMERICAL, " ".join(str(error).split())
    if not state.quiet and not state.json and outcome.result_path.is_file():
        text, _ = _stats_from_result(outcome.result_path, title=None)
        if len(loaded.tasks) > 1:
            click.echo(f"--- {task.label}")
        click.echo(text)
    return (EXIT_OK, "") if outcome.converged else (EXIT_NUMERICAL, outcome.message)


@main.command(short_help="Check a config; print the resolved configuration.")
@config_options
@click.option("--task-index", type=click.IntRange(min=0), default=None,
              help="Print this task's resolved config.")
@click.option("--no-file-check", is_flag=True, help="Do not check that input files exist.")
@json_option
@common_options
def validate(config: str, overrides: tuple[str, ...], output: str | None, task_index: int | None,
             no_file_check: bool) -> None:
    """Check CONFIG without running it; print the resolved configuration.

    Every key is checked (unknown keys, types, ranges, choices, input files); a sweep is
    expanded and its tasks listed.
    """
    state = _state()
    loaded = _load(config, overrides, output, check_files=not no_file_check)
    if state.json:
        selected = [loaded.task(task_index)] if task_index is not None else loaded.tasks
        emit_json({
            "config": str(loaded.path), "valid": True, "count": len(loaded.tasks),
            "output_directory": str(loaded.output_directory), "sweep_keys": list(loaded.sweep),
            "tasks": [{"index": t.index, "directory": str(t.directory), "values": t.sweep_values,
                       "config": t.config} for t in selected],
        })
        return
    if task_index is not None:
        task = loaded.task(task_index)
        if not state.quiet:
            click.echo(f"# task {task.index} of {task.count}: {task.directory}")
            click.echo(dump_yaml(task.config), nl=False)
        return
    if state.quiet:
        return
    if not loaded.sweep:
        click.echo(dump_yaml(loaded.tasks[0].config), nl=False)
    else:
        base = dict(loaded.base)
        click.echo("# resolved config of task 0; the sweep varies the keys listed below")
        click.echo(dump_yaml(base), nl=False)
        click.echo(f"sweep:  # {len(loaded.tasks)} tasks")
        for task in loaded.tasks:
            values = ", ".join(f"{k}: {json.dumps(v, default=str)}" for k, v in task.sweep_values.items())
            click.echo(f"  # {task.directory.name}: {values}")
    click.echo(f"config OK: {len(loaded.tasks)} task(s), output in {loaded.output_directory}", err=True)


@main.command(short_help="Write a random bidisperse packing (H5MD).")
@click.option("--n", "n", type=click.IntRange(min=2), required=True, help="Number of particles.")
@click.option("--dim", type=click.Choice(["2", "3"]), default="2", show_default=True,
              help="2: disks, 3: spheres.")
@click.option("--phi", type=click.FloatRange(min=0, max=2, min_open=True), default=0.9,
              show_default=True, help="Packing fraction.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--size-ratio", type=click.FloatRange(min=0, min_open=True), default=1.4,
              show_default=True, help="Large over small diameter (50:50 mixture).")
@click.option("--tilt", multiple=True, metavar="NAME=T",
              help="A sheared (triclinic) box: tilt factor xy, xz or yz (2D: xy) in units of "
                   "the box edge, e.g. --tilt xy=0.2 (repeatable; the volume is unchanged).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="The H5MD file to write.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@common_options
def generate(n: int, dim: str, phi: float, seed: int, size_ratio: float, tilt: tuple,
             output: str, force: bool) -> None:
    """Write a random bidisperse packing (H5MD) to start from.

    Half the particles are small (species 0, diameter 1), half large (species 1, diameter
    SIZE_RATIO), uniform at random in a periodic box sized for packing fraction PHI. They
    overlap: `sensitivity run` relaxes them.
    """
    state = _state()
    path = Path(output)
    if path.exists() and not force:
        raise UserError(f"{path} exists; pass --force to overwrite it or choose another -o")
    from sensitivity.systems._system import thin_cell_problem
    from sensitivity.systems.generate import random_packing, tilt_matrix
    from sensitivity.systems.io import write_packing

    tilts = {}
    for item in tilt:
        name, _, value = item.partition("=")
        try:
            tilts[name.strip()] = float(value)
        except ValueError:
            raise UserError(f"--tilt {item!r}: expected NAME=T with a number T, "
                            "e.g. --tilt xy=0.2") from None
    try:
        tilt_matrix(tilts, int(dim))
    except ValueError as error:
        raise UserError(f"--{error}") from None
    system = random_packing(n, dim=int(dim), phi=phi, seed=seed, size_ratio=size_ratio,
                            tilt=tilts or None)
    if system.box.ndim == 2:
        problem = thin_cell_problem(system.box, float(system.diameters.max()))
        if problem:
            raise UserError(f"--tilt: the sheared box {problem}")
    write_packing(path, system)
    if not state.quiet:
        if system.box.ndim == 2:
            box = "cell vectors " + ", ".join(
                "(" + ", ".join(f"{e:.6g}" for e in column) + ")" for column in system.box.T)
        else:
            box = "box " + " x ".join(f"{edge:.6g}" for edge in system.box)
        click.echo(
            f"wrote {path}: {n} {'disks' if dim == '2' else 'spheres'}, phi {phi:g}, seed {seed}, "
            f"{box}"
        )


@main.command(short_help="Summarize a result file.")
@click.argument("result", type=click.Path(dir_okay=False))
@click.option("--top", type=click.IntRange(min=0), default=5, show_default=True,
              help="How many of the largest responses to list per theta.")
@json_option
@common_options
def inspect(result: str, top: int) -> None:
    """Summarize a result file: system, thetas (with their units, axes and gauge),
    convergence, residuals, zero modes and the largest responses."""
    from sensitivity.systems.summary import summarize

    from ._inspect import render_summary

    summary = summarize(result, top=top)
    if _state().json:
        emit_json(summary)
    else:
        click.echo(render_summary(summary))


@main.command(short_help="Redraw the figures of a result file.")
@click.argument("result", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="Folder for the figures [default: plots/ beside RESULT].")
@click.option("--format", "fmt", type=click.Choice(["png", "pdf", "svg"]), default="png",
              show_default=True, help="Figure format.")
@click.option("--dpi", type=click.FloatRange(min=10, max=2400), default=150, show_default=True,
              help="Resolution of PNG figures.")
@click.option("--theta", "names", multiple=True, metavar="NAME",
              help="Draw only this theta (repeatable) [default: every theta].")
@click.option("--component", type=int, default=None,
              help="For a theta with several components (diameters), which one to draw "
              "[default: the largest response].")
@click.option("--color-by-magnitude", is_flag=True,
              help="Colour the particles by |dx*_i/dtheta| (colour bar) instead of by species.")
@click.option("--slice-z", type=float, default=None,
              help="3D: the height of the slice drawn [default: the middle of the box].")
@click.option("--scale", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Arrow length drawn per unit of dx*/dtheta [default: the median arrow is half "
              "a mean diameter long].")
@common_options
def plot(result: str, output: str | None, fmt: str, dpi: float, names: tuple[str, ...],
         component: int | None, color_by_magnitude: bool, slice_z: float | None,
         scale: float | None) -> None:
    """Redraw the figures of a result file: the response field dx*/dtheta as arrows on the
    packing (species legend, a reference arrow, arrows wrapped across the periodic boundary;
    3D: a slice), and the histogram of |dx*/dtheta| per particle, for every theta."""
    state = _state()
    from sensitivity.systems.io import read_result
    from sensitivity.systems.plots import plot_result

    loaded = read_result(result)
    directory = Path(output) if output else Path(result).resolve().parent / "plots"
    paths = plot_result(loaded, directory, format=fmt, dpi=dpi, names=list(names) or None,
                        component=component, color_by_magnitude=color_by_magnitude,
                        slice_z=slice_z, scale=scale)
    if not state.quiet:
        for path in paths:
            click.echo(str(path))


@main.command(short_help="Write a result for ASE / OVITO (extended XYZ).")
@click.argument("result", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["extxyz"]), default="extxyz", show_default=True,
              help="extxyz: ASE and OVITO read it (each theta's response a per-atom vector).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="File to write [default: RESULT with the format's suffix].")
@common_options
def export(result: str, fmt: str, output: str | None) -> None:
    """Write RESULT in a format visualisation tools read: the relaxed packing, the box as
    the lattice, and each scalar theta's dx*/dtheta as a per-atom vector property."""
    state = _state()
    from sensitivity.systems.io import read_result

    from sensitivity.systems.export import export_extxyz

    loaded = read_result(result)
    path = Path(output) if output else Path(result).with_suffix(f".{fmt}")
    written, skipped = export_extxyz(loaded, path)
    for name in skipped:
        click.echo(f"note: theta {name!r} has several components ([P][N][d]); not exported "
                   "(read it from the result file)", err=True)
    if not state.quiet:
        click.echo(str(written))


@main.command(short_help="Finite-difference audit of the derivatives.")
@config_options
@click.option("--task-index", type=click.IntRange(min=0), default=None,
              help="Audit only this task [default: $SLURM_ARRAY_TASK_ID; unset: every task].")
@click.option("--tolerance", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Largest relative error accepted [default: the audit's own].")
@json_option
@cache_options
@common_options
def check(config: str, overrides: tuple[str, ...], output: str | None, task_index: int | None,
          tolerance: float | None) -> None:
    """Audit the implicit derivatives of CONFIG against finite differences.

    Re-minimizes at theta +/- h (sensitivity.fd_step) from x* and compares the central
    difference with dx*/dtheta on the non-rattlers, after the same gauge fixing. Exit code 1
    when they disagree.
    """
    state = _state()
    reporter = state.reporter()
    loaded = _load(config, overrides, output)
    tasks = _select_tasks(loaded, task_index)
    setup_jax(state, reporter)
    from sensitivity.systems.pipeline import audit_task

    from ._inspect import render_audit

    failed = []
    reasons: dict[int, str] = {}
    records = []  # --json
    with stop_on_sigterm():
        for task in tasks:
            label = task.label if len(loaded.tasks) > 1 else Path(loaded.path).name
            with reporter.task(label, ftol=task.config["minimizer"]["ftol"]):
                audit = audit_task(task.config, progress=reporter.progress)
            text, ok = render_audit(audit, tolerance=tolerance)
            records.append({"index": task.index, "label": task.label, "passed": ok,
                            "audit": audit})
            if not state.quiet and not state.json:
                if len(loaded.tasks) > 1:
                    click.echo(f"--- {task.label}")
                click.echo(text)
            if not ok:
                failed.append(task.index)
                if audit.get("reason"):
                    reasons[task.index] = " ".join(str(audit["reason"]).split())
    if state.json:
        emit_json({"config": str(loaded.path), "passed": not failed, "tolerance": tolerance,
                   "tasks": records})
    if reasons:
        lines = [f"task {i}: {reason}" if len(loaded.tasks) > 1 else reason
                 for i, reason in sorted(reasons.items())]
        raise NumericalFailure("nothing to audit: " + "\n".join(lines))
    if failed:
        which = ", ".join(str(i) for i in failed)
        raise NumericalFailure(
            f"finite-difference audit failed for task(s) {which}: the implicit derivative and "
            "the finite difference disagree (see the table); tighten minimizer.ftol and "
            "sensitivity.tol, or try another sensitivity.fd_step"
        )


@main.command(short_help="Gather a sweep's results into CSV + HDF5.")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="Summary path: writes SUMMARY.csv and SUMMARY.h5 (a .csv/.h5 suffix is "
              "replaced).")
@json_option
@common_options
def collect(directory: str, output: str) -> None:
    """Gather the results under DIRECTORY (a sweep's output folder) into one CSV table and one
    HDF5 file with every task's relaxed packing and dx*/dtheta."""
    state = _state()
    from sensitivity.systems.summary import collect_results

    reporter = state.reporter()
    csv_path, h5_path, table = collect_results(Path(directory), Path(output), reporter)
    missing = sum(1 for row in table if row["status"] == "missing")
    unreadable = sum(1 for row in table if row["status"] == "unreadable")
    text = (f"wrote {csv_path} and {h5_path}: {len(table)} task(s)"
            + (f", {missing} without a result" if missing else "")
            + (f", {unreadable} unreadable (rows marked; see the warnings)" if unreadable else ""))
    if state.json:
        emit_json({"csv": str(csv_path), "h5": str(h5_path), "count": len(table),
                   "missing": missing, "unreadable": unreadable, "table": table})
    elif not state.quiet and not unreadable:
        click.echo(text)
    if unreadable:
        raise NumericalFailure(text)


@main.command(short_help="Submit a sweep as a Slurm job array.")
@config_options
@click.option("--dry-run", is_flag=True, help="Write and print the script; do not submit.")
@click.option("--all", "all_tasks", is_flag=True,
              help="Recompute every task, also the complete ones (the array runs --overwrite).")
@click.option("--failed", "only_failed", is_flag=True,
              help="Only the tasks that ran and are not done (failed, incomplete, stale); not "
              "those never started.")
@click.option("--keep-failed", is_flag=True,
              help="Count tasks that finished without converging as done.")
@click.option("--script", type=click.Path(dir_okay=False), default=None,
              help="Where to write the sbatch script [default: OUTPUT/submit.sbatch].")
@click.option("--partition", default=None, help="Slurm partition (slurm.partition).")
@click.option("--time", "time_limit", default=None, help="Time limit per task (slurm.time).")
@click.option("--mem", default=None, help="Memory per task (slurm.mem).")
@click.option("--cpus-per-task", type=click.IntRange(min=1), default=None,
              help="CPUs per task (slurm.cpus_per_task).")
@click.option("--gpus", type=click.IntRange(min=0), default=None,
              help="GPUs per task (slurm.gpus).")
@click.option("--max-parallel", type=click.IntRange(min=1), default=None,
              help="At most this many tasks at once (slurm.max_parallel).")
@cache_options
@common_options
def submit(config: str, overrides: tuple[str, ...], output: str | None, dry_run: bool,
           all_tasks: bool, only_failed: bool, keep_failed: bool, script: str | None, partition,
           time_limit, mem, cpus_per_task, gpus, max_parallel) -> None:
    """Submit the tasks of CONFIG as a Slurm job array (sbatch --array).

    Resources come from the config's slurm section, overridden by the options. The array holds
    the tasks that are not done (see `sensitivity status`), less those already queued or
    running from an earlier submission; resubmitting resumes a sweep.
    """
    from sensitivity.systems.slurm import (queued_indices, record_submission, render_script,
                                           submit_script)

    state = _state()
    if all_tasks and only_failed:
        raise UserError("--all and --failed contradict each other; give one")
    options = {
        "partition": partition, "time": time_limit, "mem": mem, "cpus_per_task": cpus_per_task,
        "gpus": gpus, "max_parallel": max_parallel,
    }
    overrides = tuple(overrides) + tuple(
        f"slurm.{key}={json.dumps(value)}" for key, value in options.items() if value is not None
    )
    loaded = _load(config, overrides, output)
    top = loaded.output_directory
    if all_tasks:
        indices = [task.index for task in loaded.tasks]
    else:
        queued = queued_indices(top)
        indices = []
        for task in loaded.tasks:
            status = task_state(task)
            if status.finished(keep_failed) or status.state == "running" or task.index in queued:
                continue
            if only_failed and status.state == "missing":
                continue
            indices.append(task.index)
    if not indices:
        if not state.quiet:
            what = "ran and failed" if only_failed else "to do (queued, running or complete)"
            click.echo(f"nothing to submit: none of the {len(loaded.tasks)} task(s) {what} "
                       "(`sensitivity status` shows each; --all recomputes them)")
        return
    run_arguments: list[str] = []
    for override in overrides:
        run_arguments += ["--set", override]
    run_arguments += ["--output", str(top)]
    if all_tasks:
        run_arguments.append("--overwrite")
    if keep_failed:
        run_arguments.append("--keep-failed")
    if state.verbose:
        run_arguments.append("-" + "v" * state.verbose)
    environment = {}
    cache = cache_directory(state)
    environment["SENSITIVITY_CACHE_DIR"] = str(cache) if cache is not None else "off"
    text = render_script(
        config_path=loaded.path,
        indices=indices,
        slurm=loaded.base["slurm"],
        log_directory=top / "logs",
        workdir=Path.cwd(),
        run_arguments=run_arguments,
        environment=environment,
        task_count=len(loaded.tasks),
    )
    from sensitivity.systems import atomic_write_text, ensure_writable_folder

    script_path = Path(script) if script else top / "submit.sbatch"
    ensure_writable_folder(top / "logs", "log folder")
    atomic_write_text(script_path, text)
    write_manifest(loaded)
    if dry_run:
        if not state.quiet:
            click.echo(text, nl=False)
        click.echo(f"wrote {script_path} ({len(indices)} task(s)); not submitted (--dry-run)",
                   err=True)
        return
    job_id = submit_script(script_path)
    record_submission(top, job_id, indices, script_path)
    if state.quiet:
        click.echo(job_id)
    else:
        click.echo(f"submitted job {job_id}: {len(indices)} task(s) of {len(loaded.tasks)}, "
                   f"script {script_path}, logs {top / 'logs'}")
        click.echo(f"follow it: sensitivity status {top}; when done: sensitivity collect {top} "
                   f"-o {top / 'summary'}")


@main.command(short_help="Where each task of a run or sweep stands.")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@common_options
def status(directory: str, as_json: bool) -> None:
    """Show each task under DIRECTORY (a run's or sweep's output folder): done, failed (with the
    reason), incomplete, stale, missing or running, and the Slurm state of its array element
    when `submit` sent it. Exit code 0 when every task is done, 1 otherwise."""
    from sensitivity.systems.tasks import task_status

    from sensitivity.systems.slurm import submitted_states

    state = _state()
    top = Path(directory)
    if not top.is_dir():
        raise UserError(f"{top}: no such folder; give the output folder of a run or sweep")
    tasks = find_tasks(top)
    if not tasks:
        raise UserError(f"{top}: no task found (no {MANIFEST_NAME}, no task folder); run "
                        "`sensitivity run CONFIG` or `sensitivity submit CONFIG` first")
    slurm_states = submitted_states(top)
    rows = []
    for task in tasks:
        status_ = task_status(task["directory"], config_sha256=task.get("config_sha256"))
        rows.append({
            "task": task["index"],
            "directory": os.path.relpath(task["directory"], top),
            "state": status_.state,
            "reason": status_.reason,
            "slurm": slurm_states.get(task["index"]),
        })
    counts = {name: sum(1 for r in rows if r["state"] == name) for name in
              ("done", "failed", "incomplete", "stale", "running", "missing")}
    if as_json:
        click.echo(json.dumps({"directory": str(top), "counts": counts, "tasks": rows}, indent=1))
    elif not state.quiet:
        width = max(len(r["directory"]) for r in rows)
        show_slurm = any(r["slurm"] for r in rows)
        for r in rows:
            slurm_text = f"  {r['slurm'] or '-':<11}" if show_slurm else ""
            click.echo(f"{r['task']:>5}  {r['directory']:<{width}}  {r['state']:<10}{slurm_text}  "
                       f"{r['reason']}".rstrip())
        click.echo(", ".join(f"{v} {k}" for k, v in counts.items() if v) + f" of {len(rows)}",
                   err=True)
    if counts["done"] != len(rows):
        sys.exit(EXIT_NUMERICAL)


if __name__ == "__main__":  # pragma: no cover
    main()
