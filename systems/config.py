"""The YAML configuration: validation, defaults, ``--set`` overrides and sweeps.

A config file is read into the *resolved config dict* that ``systems.pipeline.run_task`` takes
(see the systems/CLI contract): every section present, every default filled in, every value
checked, every path absolute (the keys: :mod:`systems.schema` and :mod:`systems.settings`).
Unknown keys are rejected; each error names the file, the key path,
the value found and what is allowed, one line per mistake, and suggests the closest known key for
a typo.

Paths written in a config file are relative to the file's folder; paths given on the command line
(``--set system.path=...``, ``--output``) are relative to the current directory.

A ``sweep`` section maps dotted key paths to lists of values; the sweep expands to the cartesian
product of those lists (the first key varies slowest), one *task* per combination, numbered from
0, each with its own output folder ``<output.directory>/task-0003/``. Without a sweep there is one
task, whose output folder is ``output.directory`` itself.

This module imports only the standard library and PyYAML, so that ``sensitivity --help`` and
``sensitivity validate`` stay instant.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import operator
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from . import settings
from .schema import (MAX_CONFIG_BYTES, PATH_KEYS, SCHEMA, SEED, SWEEPABLE, TOO_DEEP, TOP_LEVEL,
                     ConfigError, check_printable, control_errors, show, structure_error)
from .settings import Invalid, unknown_key

__all__ = ["ConfigError", "LoadedConfig", "Task", "dump_yaml", "load_config", "parse_override",
           "resolve_config", "task_directory_name"]

MAX_TASKS = 100_000


# ---------------------------------------------------------------------------------------------
# Resolution of one (sweep-free) config
# ---------------------------------------------------------------------------------------------



def _resolve_path(value: str, base: Path) -> str:
    path = Path(os.path.expanduser(value))
    if not path.is_absolute():
        path = base / path
    return os.path.normpath(str(path))


def resolve_config(
    raw: Any, base_dir: str | os.PathLike = ".", *, check_files: bool = True
) -> tuple[dict, list[str]]:
    """Validate one config mapping (without ``sweep``) and fill in the defaults.

    Args:
        raw: the parsed YAML (a mapping).
        base_dir: folder that relative paths are resolved against (the config file's folder).
        check_files: check that ``system.path`` names an existing file.

    Returns:
        ``(resolved, errors)``: the resolved config dict of the systems contract (with the
        ``slurm`` section, without ``sweep``), and one message per mistake, each starting with
        the key path. ``resolved`` is only meaningful when ``errors`` is empty.
    """
    base = Path(base_dir)
    errors: list[str] = []
    resolved: dict[str, Any] = {}
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        return {}, [f"the config must be a mapping of sections ({', '.join(TOP_LEVEL)}); got {show(raw)}"]

    for key in raw:
        if key not in TOP_LEVEL:
            errors.append(unknown_key("", key, TOP_LEVEL))

    for section, fields in SCHEMA.items():
        given = raw.get(section)
        if given is None:
            given = {}
        if isinstance(given, Mapping):
            out, section_errors = settings.check_section(fields, given, section, show=show)
            errors += section_errors
        else:  # its defaults; a required key's "is required" would only repeat this line
            errors.append(f"{section} = {show(given)}: must be a mapping with keys {', '.join(fields)}")
            out, _ = settings.check_section(fields, {}, section, show=show)
        for key in fields:
            if (section, key) in PATH_KEYS and isinstance(out[key], str):
                out[key] = _resolve_path(out[key], base)
        resolved[section] = out

    resolved["parameters"] = _resolve_parameters(raw.get("parameters", None), errors)

    resolved["seed"] = SEED.default
    if "seed" in raw:
        try:
            resolved["seed"] = SEED.check(raw["seed"])
        except Invalid as bad:
            errors.append(f"seed = {show(raw['seed'])}: must be {bad.allowed}")

    # Checks across keys (defined with the settings). A potential key left null is checked
    # at its default here, and again with the input file's values when the run reads it.
    if not errors:
        pot = {k: settings.POTENTIAL[k].default if v is None else v
               for k, v in resolved["potential"].items()}
        errors += settings.potential_errors(pot) + settings.minimizer_errors(resolved["minimizer"])
        errors += settings.sensitivity_errors(resolved["sensitivity"])
    path = resolved["system"].get("path")
    if check_files and isinstance(path, str) and "system.path" not in " ".join(errors):
        if not os.path.isfile(path):
            given = raw["system"]["path"]
            shown = show(given) if given == path else f"{show(given)} ({path})"
            problem = ("is a folder, not a file" if os.path.isdir(path) else
                       "is not a regular file (a pipe, device or socket)"
                       if os.path.exists(path) else "no such file")
            errors.append(
                f"system.path = {shown}: {problem}; give an H5MD packing, e.g. one written by "
                "`sensitivity generate`"
            )
    order = ("system", "potential", "minimizer", "parameters", "sensitivity", "output", "seed", "slurm")
    return {key: resolved[key] for key in order}, errors


def _default_parameters() -> list[dict]:
    return copy.deepcopy(list(settings.DEFAULT_PARAMETERS))


def _resolve_parameters(given: Any, errors: list[str]) -> list[dict]:
    if given is None:
        return _default_parameters()
    if isinstance(given, Mapping) and given:
        given = [given]  # a single θ written as a mapping
    if not isinstance(given, list) or not given:
        errors.append(
            f"parameters = {show(given)}: must be a non-empty list of "
            "{name, kind, species} entries, e.g. [{name: small_diameter, kind: diameter, species: 0}]"
        )
        return _default_parameters()
    out = []
    names: dict[str, int] = {}
    for i, entry in enumerate(given):
        where = f"parameters[{i}]"
        if not isinstance(entry, Mapping):
            errors.append(
                f"{where} = {show(entry)}: must be a mapping such as "
                "{name: small_diameter, kind: diameter, species: 0}"
            )
            continue
        item: dict[str, Any] = {}
        for key in entry:
            if key not in settings.PARAMETER:
                errors.append(unknown_key(where, key, settings.PARAMETER))
        for key, field in settings.PARAMETER.items():
            if key not in entry:
                if field.required:
                    errors.append(f"{where}.{key} is required: {field.check.allowed}")
                item[key] = copy.deepcopy(field.default)
                continue
            try:
                item[key] = field.check(entry[key])
            except Invalid as bad:
                errors.append(f"{where}.{key} = {show(entry[key])}: must be {bad.allowed}")
                item[key] = None
        kind, species = item.get("kind"), item.get("species")
        if kind == "diameter" and species is None and "species" not in entry:
            errors.append(
                f"{where}.species is required for kind diameter: the species whose diameter "
                "is theta (an integer >= 0)"
            )
        if kind == "strain" and item.get("component") is None and "component" not in entry:
            errors.append(
                f"{where}.component is required for kind strain: one of "
                f"{', '.join(settings.STRAIN_COMPONENTS)} (2D: xx, yy, xy)"
            )
        if kind != "strain" and item.get("component") is not None:
            errors.append(
                f"{where}.component = {item['component']}: only kind strain takes a component; "
                "remove it"
            )
        if kind in ("diameters", "box", "strain") and species is not None:
            errors.append(
                f"{where}.species = {species}: kind {kind} takes no species; remove it"
            )
        if item.get("component") is None:
            item.pop("component", None)  # only strain θs carry one
        name = item.get("name")
        if isinstance(name, str):
            if name in names:
                errors.append(
                    f"{where}.name = {show(name)}: already used by parameters[{names[name]}]; "
                    "names must be unique"
                )
            names.setdefault(name, i)
        out.append(item)
    return out


# ---------------------------------------------------------------------------------------------
# Overrides (--set key.path=value)
# ---------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """Parse ``key.path=value``: the value is read as a YAML scalar (or flow list/mapping).

    ``sweep.system.path=[a.h5, b.h5]`` sets the sweep key ``system.path``; ``parameters.0.species=1``
    indexes into the list of parameters.

    Raises:
        ConfigError: the text has no ``=`` or the value is not valid YAML.
    """
    if "=" not in text:
        raise ConfigError(
            f"--set {text!r}: expected key.path=value, e.g. --set minimizer.ftol=1e-13"
        )
    key, _, value_text = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: the key path {key!r} is empty or has an empty part")
    try:
        value = _parse_yaml(value_text) if value_text.strip() else None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({first})") from None
    except RecursionError:
        raise ConfigError(f"--set {text[:60]!r}: the value {TOO_DEEP}") from None
    problem = structure_error(value)
    if problem:
        raise ConfigError(f"--set {text[:60]!r}: the value {problem}")
    parts: list[str | int]
    if key.startswith("sweep.") and key != "sweep.":
        parts = ["sweep", key[len("sweep.") :]]
    else:
        parts = [int(p) if p.isdigit() else p for p in key.split(".")]
    return parts, value


def _apply_override(raw: dict, parts: list[str | int], value: Any, text: str) -> None:
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(str(p) for p in parts[: depth + 1])
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise ConfigError(f"--set {text!r}: {where}: no such list entry (the list has {len(node)})")
            node = node[part]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {text!r}: {where} is not a mapping")
        if part == "parameters" and node.get("parameters") is None:
            node["parameters"] = _default_parameters()
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        node = child
    last = parts[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last >= len(node):
            raise ConfigError(f"--set {text!r}: no such list entry (the list has {len(node)})")
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {text!r}: cannot set a key inside {show(node)}")


def _absolute_from_cwd(parts: list[str | int], value: Any) -> Any:
    """Paths typed on the command line are relative to the current directory."""
    key = tuple(parts)

    def fix(v):
        return _resolve_path(v, Path.cwd()) if isinstance(v, str) else v

    if key in PATH_KEYS:
        return fix(value)
    if len(parts) == 2 and parts[0] == "sweep" and isinstance(parts[1], str):
        sub = tuple(parts[1].split("."))
        if sub in PATH_KEYS and isinstance(value, list):
            return [fix(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Loading, sweeps and tasks
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Task:
    """One unit of work: a resolved config and the folder its outputs go to.

    Attributes:
        index: 0-based task number (the Slurm array index).
        count: number of tasks in the sweep.
        config: the resolved config dict (``output.directory`` is the task's folder).
        directory: the task's output folder.
        sweep_values: the swept key paths and this task's values (empty without a sweep).
    """

    index: int
    count: int
    config: dict
    directory: Path
    sweep_values: dict

    @property
    def result_path(self) -> Path:
        from sensitivity.systems.tasks import RESULT_NAME

        return self.directory / RESULT_NAME

    @property
    def label(self) -> str:
        if not self.sweep_values:
            return f"task {self.index}"
        values = ", ".join(f"{k}={_show_short(v)}" for k, v in self.sweep_values.items())
        return f"task {self.index} ({values})"


def _show_short(value: Any) -> str:
    if isinstance(value, str) and os.sep in value:
        return os.path.basename(value)
    return show(value).strip("'")


@dataclasses.dataclass(frozen=True)
class LoadedConfig:
    """A config file, resolved and expanded.

    Attributes:
        path: the config file.
        text: its text (saved as provenance beside the results).
        base: the resolved config of the first task with the top-level ``output.directory``
            and the ``slurm`` section.
        sweep: swept key path -> list of resolved values (empty without a sweep).
        tasks: the tasks, in order.
        overrides: the ``--set`` texts applied.
    """

    path: Path
    text: str
    base: dict
    sweep: dict
    tasks: Sequence[Task]
    overrides: tuple[str, ...] = ()

    @property
    def output_directory(self) -> Path:
        return Path(self.base["output"]["directory"])

    def task(self, index: int) -> Task:
        if not 0 <= index < len(self.tasks):
            last = len(self.tasks) - 1
            raise ConfigError(
                f"--task-index {index}: this config has {len(self.tasks)} task(s); "
                f"use 0..{last}"
            )
        return self.tasks[index]


def task_directory_name(index: int, count: int) -> str:
    width = max(4, len(str(max(count - 1, 0))))
    return f"task-{index:0{width}d}"


def _get(raw: Mapping, dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _set(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _check_sweep(sweep: Any, label: str) -> tuple[dict, list[str]]:
    if sweep is None:
        return {}, []
    if not isinstance(sweep, Mapping):
        return {}, [
            f"sweep = {show(sweep)}: must map dotted key paths to lists of values, "
            "e.g. {system.path: [a.h5, b.h5]}"
        ]
    errors = []
    out = {}
    for key, values in sweep.items():
        if not isinstance(key, str) or key not in SWEEPABLE:
            hint = difflib.get_close_matches(str(key), SWEEPABLE, n=1)
            suggestion = f"did you mean '{hint[0]}'? " if hint else ""
            errors.append(
                f"sweep key '{key}' is not a config key a sweep can vary: {suggestion}"
                "use a dotted path such as system.path, potential.alpha or seed"
            )
            continue
        if not isinstance(values, list) or not values:
            errors.append(
                f"sweep.{key} = {show(values)}: must be a non-empty list of values, "
                f"e.g. [{show(_get(_example_values(), key) or 1)}, ...]"
            )
            continue
        out[key] = values
    count = math.prod(len(v) for v in out.values()) if out else 1
    if count > MAX_TASKS:
        errors.append(f"sweep: {count} tasks is more than the {MAX_TASKS} allowed; split the sweep")
    return out, errors



def _example_values() -> dict:
    """The defaults of every section (a required key, having none, is left out)."""
    return {section: settings.defaults(fields) for section, fields in SCHEMA.items()}


def _read_config_text(path: Path, label: str) -> str:
    """The config file's text: a regular file (a pipe or a device such as ``/dev/zero``
    would block or never end) of at most :data:`MAX_CONFIG_BYTES`, in UTF-8."""
    try:  # O_NONBLOCK: opening a FIFO does not wait for a writer
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                             | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(f"{label}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{label}: is a folder, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read the config file ({exc.strerror})") from None
    try:
        mode = os.fstat(descriptor).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(f"{label}: is a folder, not a config file")
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{label}: is not a regular file (a pipe, device or socket); "
                              "write the config to a file")
        with os.fdopen(os.dup(descriptor), "rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read the config file ({exc.strerror})") from None
    finally:
        os.close(descriptor)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{label}: is larger than {MAX_CONFIG_BYTES >> 20} MiB; a config "
                          "is a short YAML file (list a large sweep's packings in several "
                          "configs)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{label}: cannot read the config file (not UTF-8 text: "
                          f"{exc.reason} at byte {exc.start})") from None


def load_config(
    path: str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    output: str | os.PathLike | None = None,
    check_files: bool = True,
    only: int | None = None,
) -> LoadedConfig:
    """Read, override, validate and expand a config file.

    Args:
        path: the YAML file.
        overrides: ``key.path=value`` texts (``--set``), applied in order before validation.
        output: replaces ``output.directory`` (relative to the current directory).
        check_files: check that every input file exists.
        only: validate and resolve only this task now (a Slurm array task: the whole sweep
            was validated when it was submitted); the others are resolved when asked for
            (until then their values in ``sweep`` are None).
            Each task's resolution costs ~0.1 ms, so resolving every task made each task
            of an array of N pay O(N): 2.5 s at N = 10,000.

    Raises:
        ConfigError: with one line per mistake, each naming the file, key path, value and what
            is allowed.
    """
    check_printable(os.fspath(path), "config path")
    if output is not None:
        check_printable(os.fspath(output), "--output")
    for override in overrides:
        check_printable(override, "--set")
    path = Path(path)
    label = str(path)
    text = _read_config_text(path, label)
    try:
        raw = _parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{label}:{where} not valid YAML ({problem})") from None
    except RecursionError:
        raise ConfigError(f"{label}: {TOO_DEEP}") from None
    problem = structure_error(raw)
    if problem:
        raise ConfigError(f"{label}: {problem}")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{label}: the config must be a mapping of sections "
            f"({', '.join(TOP_LEVEL)}), not {type(raw).__name__}"
        )
    raw = copy.deepcopy(raw)
    base_dir = path.resolve().parent

    for override in overrides:
        parts, value = parse_override(override)
        _apply_override(raw, parts, _absolute_from_cwd(parts, value), override)
    control = control_errors(raw)
    if control:
        raise ConfigError([f"{label}: {e}" for e in control])
    if output is not None:
        raw.setdefault("output", {})
        if not isinstance(raw["output"], dict):
            raw["output"] = {}
        raw["output"]["directory"] = _resolve_path(os.fspath(output), Path.cwd())

    sweep, errors = _check_sweep(raw.pop("sweep", None), label)
    if errors:
        raise ConfigError([f"{label}: {e}" for e in errors])

    keys = list(sweep)
    sizes = [len(sweep[k]) for k in keys]
    count = math.prod(sizes)
    resolved_sweep: dict[str, list] = {k: [None] * len(sweep[k]) for k in keys}

    def resolve_task(index: int) -> tuple[Task | None, list[str]]:
        """Task ``index``, or None and its errors."""
        combo = _combination(index, sizes)
        raw_task = copy.deepcopy(raw)
        for key, which in zip(keys, combo):
            _set(raw_task, key, copy.deepcopy(sweep[key][which]))
        resolved, task_errors = resolve_config(raw_task, base_dir, check_files=check_files)
        if task_errors:
            return None, [_attribute_to_sweep(e, keys, combo) for e in task_errors]
        values = {}
        for key, which in zip(keys, combo):
            value = _get(resolved, key) if key != "parameters" else resolved["parameters"]
            resolved_sweep[key][which] = value
            values[key] = value
        top = Path(resolved["output"]["directory"])
        directory = top / task_directory_name(index, count) if keys else top
        resolved["output"]["directory"] = str(directory)
        return Task(index, count, resolved, directory, values), []

    def base_of(task: Task) -> dict:  # a task's config with the sweep's top output folder
        base = copy.deepcopy(task.config)
        base["output"]["directory"] = str(task.directory.parent if keys else task.directory)
        return base

    if only is not None and 0 <= only < count:

        def make(index: int) -> Task:
            task, task_errors = resolve_task(index)
            if task_errors:
                raise ConfigError([f"{label}: {e}" for e in dict.fromkeys(task_errors)])
            return task

        lazy = _Tasks(count, make)
        chosen = lazy[only]  # its errors are this run's
        try:  # the base is the first task's, as when every task is resolved
            first = lazy[0]
        except ConfigError:  # (not validated here: a Slurm array's was, when submitted)
            first = chosen
        return LoadedConfig(path, text, base_of(first), resolved_sweep, lazy, tuple(overrides))
    tasks: list[Task] = []
    seen: list[str] = []
    for index in range(count):
        task, task_errors = resolve_task(index)
        for error in task_errors:
            if error not in seen:
                seen.append(error)
        if task is not None:
            tasks.append(task)
    if seen:
        raise ConfigError([f"{label}: {e}" for e in seen])
    return LoadedConfig(path, text, base_of(tasks[0]), resolved_sweep, tasks, tuple(overrides))


def _combination(index: int, sizes: list[int]) -> tuple[int, ...]:
    """The ``index``-th combination of ``itertools.product(*map(range, sizes))`` (the first
    key varies slowest)."""
    combo = []
    for size in reversed(sizes):
        index, which = divmod(index, size)
        combo.append(which)
    return tuple(reversed(combo))


class _Tasks(Sequence):
    """A sweep's tasks resolved when first asked for (:func:`load_config`'s ``only``)."""

    def __init__(self, count: int, make):
        self._count, self._make, self._made = count, make, {}

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        index = operator.index(index)
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(index)
        if index not in self._made:
            self._made[index] = self._make(index)
        return self._made[index]


def _attribute_to_sweep(error: str, keys: list[str], combo: tuple) -> str:
    """Rewrite ``system.path = ...: msg`` as ``sweep.system.path[1] = ...: msg`` for swept keys."""
    for key, which in zip(keys, combo):
        if error.startswith(key + " ") or error.startswith(key + "[") or error.startswith(key + "."):
            return f"sweep.{key}[{which}]" + error[len(key) :]
    return error


#: libyaml's parser where PyYAML was built with it (a 100,000-task sweep's 1 MB config in
#: 0.46 s instead of 4.3 s), PyYAML's own otherwise; the same constructor and resolver (YAML
#: 1.1's implicit types) either way.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parse_yaml(text: str) -> Any:
    """The YAML in ``text`` (safe types only), by libyaml where PyYAML has it.

    Raises:
        yaml.YAMLError: in PyYAML's own words where libyaml's are poorer (libyaml: "found
            character that cannot start any token", without naming the tab).
        RecursionError: the text nests past what either parser follows (PyYAML's composer
            recurses once per level; libyaml >= 0.2.5, as PyYAML 6.0.4 bundles it, stops at
            1,000 levels), always far past :data:`MAX_CONFIG_DEPTH`.
    """
    try:
        return yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        if _SAFE_LOADER is yaml.SafeLoader:
            raise
        if "maximum nesting depth" in str(getattr(exc, "problem", "")):
            raise RecursionError(exc.problem) from None  # PyYAML's parser: 1.5 s to say so
        yaml.load(text, Loader=yaml.SafeLoader)  # raises in its own words, or RecursionError
        raise  # (it accepted what libyaml refused: libyaml's words, then)


#: libyaml's emitter where PyYAML was built with it (a task's config in 0.7 ms instead of
#: 2.8 ms, written once per task of a sweep), PyYAML's own otherwise: the same text
#: (tests/command_line/test_config.py compares them).
_SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump_yaml(data: Any) -> str:
    """YAML in block style, keys in schema order."""
    return yaml.dump(data, Dumper=_SAFE_DUMPER, sort_keys=False, default_flow_style=False,
                     width=100)

