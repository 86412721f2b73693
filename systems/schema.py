"""The config file's vocabulary: its sections and keys, the grammar of their values, and the
annotated example.

The physics sections (``potential``, ``minimizer``, ``sensitivity``, ``parameters``) are
defined once in :mod:`systems.settings`; the sections only a run's bookkeeping reads
(``system``, ``output``, ``slurm``) are defined here, with the Slurm grammar their values must
follow and the rule that no config string holds a control character. :mod:`systems.config`
reads a file against this schema; :func:`show` gives its messages their shape (the value
as the user typed it).

This module imports only the standard library and PyYAML.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from . import settings
from .settings import NAME, Check, Invalid, Setting, boolean, integer, nullable, string

__all__ = ["ConfigError", "EXAMPLE_CONFIG", "PATH_KEYS", "SCHEMA", "SEED", "SWEEPABLE",
           "TOP_LEVEL", "check_printable", "control_errors", "show"]

#: Characters no config string may hold: C0 controls (newline, CR, NUL, tab, ESC...) and DEL.
#: Strings reach file names, log lines and the sbatch script; a newline there is a new command.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ConfigError(ValueError):
    """A mistake in a config file or a ``--set`` override (exit code 2 on the command line).

    Attributes:
        errors: one complete, one-line message per mistake.
    """

    def __init__(self, errors: str | Sequence[str]):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


# ---------------------------------------------------------------------------------------------
# The schema. The physics sections (potential, minimizer, sensitivity, parameters) are defined
# once in systems.settings; the sections only the command line reads are defined here.
# ---------------------------------------------------------------------------------------------


def _sbatch_options() -> Check:
    allowed = ("a list of sbatch options such as --account=abc or --qos=low (one option each, "
               "no spaces or quotes in the value)")

    def check(value):
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise Invalid(allowed)
        if not all(_SBATCH_OPTION.fullmatch(v.strip()) for v in value):
            raise Invalid(allowed)
        return [v.strip() for v in value]

    return Check(check, allowed)


# A path: resolved against the config file's folder (the base passed to the resolver).
_PATH = string(what="a file path (string)")
_DIRECTORY = string(what="a folder path (string)")

_TIME = string(
    r"(\d+-)?\d+(:\d{1,2}){0,2}|\d+-\d+",
    "a Slurm time limit such as 30, 01:00:00 or 2-00:00:00",
    numbers=True,
)
_MEMORY = string(r"\d+[KMGT]?", "a Slurm memory size such as 4000, 500M or 4G", numbers=True)
_PARTITION = string(
    r"[A-Za-z0-9_.\-]+(,[A-Za-z0-9_.\-]+)*",
    "a Slurm partition name (letters, digits, '_', '-', '.'; several separated by commas)",
)
#: One extra sbatch option: ``--name``, ``--name=value`` or ``-X value`` (an optional leading
#: ``#SBATCH`` is dropped), the value without whitespace or quotes.
_SBATCH_OPTION = re.compile(r"(#SBATCH\s+)?(--[A-Za-z][A-Za-z0-9\-]*(=[^\s'\"\\]+)?"
                            r"|-[A-Za-z](\s+[^\s'\"\\-][^\s'\"\\]*)?)")


# The schema of every section whose keys are fixed. ``parameters`` (a list) and ``sweep`` (a
# mapping of key paths) are checked by hand below.
def _unset_means_file_or_default(section: dict[str, Setting]) -> dict[str, Setting]:
    """A potential key left out (null) takes the input file's ``/parameters/potential`` value,
    else the systems default (shown in the help); an explicit value overrides the file."""
    out = {}
    for key, setting in section.items():
        if setting.default is None:  # null is already a value of its own
            out[key] = setting
            continue
        shown = setting.default
        help_ = f"{setting.help} (null: {shown})" if setting.help else f"null: {shown}"
        out[key] = Setting(nullable(setting.check), None, help_)
    return out


SCHEMA: dict[str, dict[str, Setting]] = {
    "system": {
        "path": Setting(_PATH, help="H5MD input file"),
        "group": Setting(string(), settings.PARTICLES_GROUP, "particles group in the H5MD file"),
        "frame": Setting(integer(), settings.LAST_FRAME,
                         "frame of a time-dependent file (-1: the last)"),
    },
    "potential": _unset_means_file_or_default(settings.POTENTIAL),
    "minimizer": settings.MINIMIZER,
    "sensitivity": settings.SENSITIVITY,
    "output": {
        "directory": Setting(_DIRECTORY, "out"),
        "plots": Setting(boolean(), True),
    },
    "slurm": {
        "partition": Setting(nullable(_PARTITION), None),
        "time": Setting(_TIME, "01:00:00"),
        "cpus_per_task": Setting(integer(ge=1), 1),
        "mem": Setting(_MEMORY, "4G"),
        "gpus": Setting(integer(ge=0), 0, "GPUs per task (--gres=gpu:N)"),
        "job_name": Setting(NAME, "sensitivity"),
        "max_parallel": Setting(nullable(integer(ge=1, le=1_000_000)), None,
                           "array throttle (--array=0-N%M)"),
        "extra": Setting(_sbatch_options(), [], "extra '#SBATCH' option lines, e.g. --account=abc"),
    },
}

TOP_LEVEL = (*SCHEMA, "parameters", "seed", "sweep")
SEED = Setting(integer(ge=0, le=2**32 - 1), 0, "the random seed of a run")

# Keys whose values are paths; relative ones are resolved against a base folder.
PATH_KEYS = {("system", "path"), ("output", "directory")}

# Keys a sweep may vary: every leaf of the schema except slurm's, plus seed and parameters.
SWEEPABLE = sorted(
    [f"{s}.{k}" for s, fields in SCHEMA.items() if s != "slurm" for k in fields]
    + ["seed", "parameters"]
)


def _example(section: str, key: str) -> str:
    """``key: default`` as YAML, from the one definition of the setting."""
    return yaml.safe_dump({key: SCHEMA[section][key].default}).strip()


def _choices(values) -> str:
    return " | ".join(values)


_POT, _MIN, _SENS = settings.POTENTIAL, settings.MINIMIZER, settings.SENSITIVITY
EXAMPLE_CONFIG = f"""\
system:
  path: packing.h5          # H5MD input (relative to this file's folder)
potential:
  kind: {_POT["kind"].default:<19} # {_choices(settings.POTENTIALS)}
  alpha: {_POT["alpha"].default}
  epsilon: {_POT["epsilon"].default}
minimizer:
  kind: {_MIN["kind"].default:<19} # {_choices(settings.MINIMIZERS)}
  ftol: {_MIN["ftol"].default:.1e}
  max_steps: {_MIN["max_steps"].default}
parameters:                 # the thetas to differentiate x* with respect to
  - {{name: small_diameter, kind: diameter, species: 0}}
  - {{name: stiffness, kind: epsilon}}
sensitivity:
  solver: {_SENS["solver"].default:<17} # {_choices(settings.SOLVERS[:6])}
  tol: {_SENS["tol"].default:.1e}
output:
  {_example("output", "directory")}
  {_example("output", "plots")}
sweep:                      # optional: one task per combination
  system.path: [a.h5, b.h5]
"""

def show(value: Any) -> str:
    """A value as the user would have typed it (YAML flow style, one line)."""
    if isinstance(value, str):
        text = repr(value)
    else:
        try:
            text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
            if text.endswith("\n..."):
                text = text[: -len("\n...")]
            text = text.removesuffix("...").strip()
        except yaml.YAMLError:
            text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


#: A config file larger than this is refused before it is parsed (a sweep of 100,000 packing
#: paths is ~5 MB; PyYAML parses about 1 MB a second).
MAX_CONFIG_BYTES = 16 << 20

#: A config holds at most this many values (keys, items and scalars, counted with YAML's
#: aliases expanded) and nests at most this deep: an alias repeats a node without copying
#: it, so eight nested lists of ten aliases are 10^8 values in 300 bytes (a "billion
#: laughs"), which every check of every string would walk; ``&a [*a]`` is a list that
#: contains itself.
MAX_CONFIG_VALUES = 1_000_000
MAX_CONFIG_DEPTH = 32
#: What a config (or a ``--set`` value) nested deeper than that is told, whichever parser or
#: check found it.
TOO_DEEP = f"nests more than {MAX_CONFIG_DEPTH} levels deep"


class _Refused(Exception):
    """:func:`structure_error`'s way out of its walk."""


def structure_error(node: Any) -> str | None:
    """A phrase when ``node`` (parsed YAML) contains itself, nests deeper than
    :data:`MAX_CONFIG_DEPTH` or expands to more than :data:`MAX_CONFIG_VALUES` values,
    else ``None``. Linear in the distinct nodes (a node repeated by aliases is counted once
    and its size reused); the recursion is bounded by the depth limit."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(item: Any, depth: int) -> int:
        if not isinstance(item, (Mapping, list)):
            return 1
        key = id(item)
        if key in active:
            raise _Refused("contains itself (a YAML alias to an enclosing node, such as "
                           "`&a [*a]`)")
        if key in sizes:
            return sizes[key]
        if depth >= MAX_CONFIG_DEPTH:
            raise _Refused(TOO_DEEP)
        active.add(key)
        children = (itertools.chain.from_iterable(item.items()) if isinstance(item, Mapping)
                    else item)
        total = 1
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_CONFIG_VALUES:
                raise _Refused(f"holds more than {MAX_CONFIG_VALUES:,} values once its YAML "
                               "aliases are expanded")
        active.discard(key)
        sizes[key] = total
        return total

    try:
        size(node, 0)
    except _Refused as refused:
        return str(refused)
    return None


def control_errors(node: Any, where: str = "") -> list[str]:
    """One message per string (key or value) below ``node`` holding a control character."""
    errors: list[str] = []
    if isinstance(node, str):
        match = _CONTROL.search(node)
        if match:
            errors.append(
                f"{where or 'the config'} = {node[:60]!r}: contains the control character "
                f"{match.group()!r} at position {match.start()}; config strings must be one "
                "line of printable characters"
            )
    elif isinstance(node, Mapping):
        for key, value in node.items():
            inner = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and _CONTROL.search(key):
                errors.append(f"key {key[:60]!r} in {where or 'the config'}: contains a control "
                              "character; keys are plain names")
                continue
            errors += control_errors(value, inner)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            errors += control_errors(value, f"{where}[{i}]")
    return errors


def check_printable(text: str, what: str) -> None:
    """ConfigError when a command-line string (a path, an option) holds a control character."""
    match = _CONTROL.search(text)
    if match:
        raise ConfigError(
            f"{what} {text[:60]!r}: contains the control character {match.group()!r} at "
            f"position {match.start()}; give one line of printable characters"
        )
