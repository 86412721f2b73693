"""What every command shares: its state (-v/-q/--debug/--json/cache), the option declarations
used by several commands, JSON output, and the one translation of library errors into
one-line messages and exit codes.
"""

from __future__ import annotations

import atexit
import dataclasses
import gc
import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from sensitivity.systems.config import ConfigError

EXIT_OK, EXIT_NUMERICAL, EXIT_USAGE = 0, 1, 2
EXIT_STORAGE = 74  # EX_IOERR: the environment refused a write (disk full, read-only, ...)



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

    def cache_directory(self) -> Path | None:
        """Where JAX's persistent compilation cache lives (None: off)."""
        from sensitivity.systems.batch import cache_directory

        return cache_directory(self.cache_dir, disabled=self.no_cache)


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


def _state_option(name: str, *declarations: str, **kwargs):
    """An option whose value goes to :class:`State` (``name``), not to the command."""
    return click.option(*declarations, expose_value=False, callback=_store(name), **kwargs)


def _apply(function, *options):
    for option in reversed(options):  # the first listed is shown first in --help
        function = option(function)
    return function


def common_options(function):
    """-v/-q/--debug, accepted before or after the command name."""
    return _apply(
        function,
        _state_option("verbose", "-v", "--verbose", count=True,
                      help="More detail (every progress event)."),
        _state_option("quiet", "-q", "--quiet", is_flag=True, help="Print nothing but errors."),
        _state_option("debug", "--debug", is_flag=True, help="Show full tracebacks."),
    )


def json_option(function):
    """--json: one JSON object on stdout (see :func:`emit_json`) instead of the text."""
    return _state_option(
        "json", "--json", "json_output", is_flag=True,
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
    """--cache-dir / --no-cache: the persistent JAX compilation cache."""
    return _apply(
        function,
        _state_option("cache_dir", "--cache-dir", type=click.Path(file_okay=False),
                      envvar="SENSITIVITY_CACHE_DIR",
                      help="JAX compilation cache folder [env SENSITIVITY_CACHE_DIR; default "
                      "~/.cache/sensitivity/jax]."),
        _state_option("no_cache", "--no-cache", is_flag=True,
                      help="Do not use the persistent JAX compilation cache."),
    )


def task_index_option(help: str):
    """--task-index N (a task of the sweep)."""
    return click.option("--task-index", type=click.IntRange(min=0), default=None, help=help)


def config_options(function):
    """CONFIG, --set and --output, shared by run, validate, check and submit."""
    return _apply(
        function,
        click.argument("config", type=click.Path(dir_okay=False)),
        click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
                     help="Override a config value (a YAML scalar or [list]); repeatable. "
                     "E.g. --set minimizer.ftol=1e-13 --set sweep.seed=[0,1,2]."),
        click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
                     help="Output folder (replaces output.directory; relative to the current "
                     "folder)."),
    )


class _LineError(click.ClickException):
    """An error shown as ``error: ...`` lines, no traceback."""

    def show(self, file=None) -> None:
        file = file or sys.stderr
        for line in self.message.splitlines() or [""]:
            click.echo(f"error: {line}", file=file)


class FiniteFloat(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN and ±inf: click lets NaN through its
    bounds (every comparison with NaN is false), and ``--dpi nan`` ended in an unexpected
    ValueError, ``--scale nan`` in a figure of NaN arrows."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


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
    if isinstance(error, OSError) and error.filename is not None:
        # an OSError on a path before any writing (a name longer than the file system
        # allows, a part of the path that is a file, ...): the path and the cause, one line
        from sensitivity.systems import storage_error

        name = error.filename
        path = os.fsdecode(name) if isinstance(name, (bytes, os.PathLike)) else str(name)
        shown = path if len(path) <= 120 else f"{path[:60]}...{path[-40:]} ({len(path)} characters)"
        return StorageFailure(str(storage_error(shown, error, "use the path")))
    return None


_QUICK_EXIT: list[bool] = []


def quick_exit() -> None:
    """Spare the process the interpreter's last garbage collections: at exit Python traverses
    every object it tracks, jax's heap included, several times (0.25-0.3 s after a run, 5% of
    a 32-task sweep; 0.04 s with this). ``gc.freeze`` puts them out of the collector's sight;
    registered before the command imports jax, it runs after every other exit handler (jax's
    clean-up among them), when the command has written and closed everything. Once per
    process."""
    if not _QUICK_EXIT:
        atexit.register(gc.freeze)
        _QUICK_EXIT.append(True)


#: The thread counts of the BLAS libraries NumPy may use (OpenBLAS, MKL, BLIS, Apple's
#: Accelerate); OpenMP's, which OpenBLAS and MKL also read, set, is the user's choice too.
_BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                 "VECLIB_MAXIMUM_THREADS")
_THREAD_SETTINGS = (*_BLAS_THREADS, "OMP_NUM_THREADS")


def single_threaded_host_blas() -> None:
    """One thread for NumPy's BLAS and LAPACK, unless the user set a thread count.

    A command's host linear algebra is small (the Ritz values of 200 Lanczos steps, dense
    Hessians of at most 256 unknowns, the QR factorization of the rigid motions); XLA runs
    the physics on its own threads. OpenBLAS starts one thread per core by default, and a
    small call then waits on threads that share the cores with XLA's (a sweep's relaxation
    workers) or another job's. Measured on 2 cores with one other busy process: the 200 × 200
    tridiagonal eigenvalues 40 ms with OpenBLAS's default, 2.4 ms with one thread (2.4 ms
    either way on idle cores). Takes effect only before NumPy is imported: called first
    by the command line's entry point, which imports neither NumPy nor jax itself.
    """
    if not any(os.environ.get(name) for name in _THREAD_SETTINGS):
        for name in _BLAS_THREADS:
            os.environ[name] = "1"


class SensitivityGroup(click.Group):
    """Turns library errors into one-line messages and exit codes (unless --debug)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        single_threaded_host_blas()
        quick_exit()
        return super().main(*args, **kwargs)

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
        except BaseException as error:  # a stop signal (systems.batch.Terminated) ends a command
            batch = sys.modules.get("sensitivity.systems.batch")  # only it raises Terminated
            if batch is None or not isinstance(error, batch.Terminated) or _state(ctx).debug:
                raise
            click.echo(f"error: stopped by {signal.Signals(error.signum).name}", err=True)
            ctx.exit(128 + error.signum)
