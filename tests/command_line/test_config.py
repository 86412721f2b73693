"""The config schema (systems/config.py): defaults, every documented error, --set, sweeps.

No physics here: the input file only has to exist, so an empty file stands in for a packing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sensitivity.systems.config import (
    ConfigError,
    load_config,
    parse_override,
    resolve_config,
    task_directory_name,
)
from sensitivity.systems.schema import EXAMPLE_CONFIG


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "packing.h5").write_bytes(b"")
    (tmp_path / "a.h5").write_bytes(b"")
    (tmp_path / "b.h5").write_bytes(b"")
    return tmp_path


def write(folder: Path, text: str, name: str = "config.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def errors_of(path: Path, overrides=(), **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides, **kwargs)
    return info.value.errors


def one_error(path: Path, overrides=(), **kwargs) -> str:
    errors = errors_of(path, overrides, **kwargs)
    assert len(errors) == 1, errors
    assert "\n" not in errors[0]
    assert errors[0].startswith(str(path)), errors[0]
    return errors[0]


# --- defaults and resolution -------------------------------------------------------------------


def test_minimal_config_gets_every_default(folder: Path):
    loaded = load_config(write(folder, "system: {path: packing.h5}\n"))
    assert len(loaded.tasks) == 1
    config = loaded.tasks[0].config
    assert list(config) == [
        "system", "potential", "minimizer", "parameters", "sensitivity", "output", "seed", "slurm",
    ]
    assert config["system"] == {"path": str(folder / "packing.h5"), "group": "all", "frame": -1}
    assert config["minimizer"]["kind"] == "fire"
    assert config["minimizer"]["ftol"] == 1e-12
    assert config["minimizer"]["max_steps"] == 200000
    assert config["sensitivity"]["solver"] == "cg"
    assert config["sensitivity"]["tol"] == 1e-10
    assert config["sensitivity"]["maxiter"] is None
    assert config["parameters"] == [{"name": "small_diameter", "kind": "diameter", "species": 0}]
    assert config["output"] == {"directory": str(folder / "out"), "plots": True}
    assert config["seed"] == 0
    assert config["slurm"]["time"] == "01:00:00"
    # Potential keys not given stay null: the input file's /parameters/potential, else defaults.
    assert all(value is None for value in config["potential"].values())
    assert loaded.tasks[0].directory == folder / "out"
    assert loaded.tasks[0].result_path == folder / "out" / "sensitivity.h5"


def test_example_config_in_help_is_valid(folder: Path):
    text = EXAMPLE_CONFIG.replace("packing.h5", "packing.h5")
    loaded = load_config(write(folder, text))
    assert [t.sweep_values["system.path"] for t in loaded.tasks] == [
        str(folder / "a.h5"), str(folder / "b.h5"),
    ]
    names = [p["name"] for p in loaded.tasks[0].config["parameters"]]
    assert names == ["small_diameter", "stiffness"]


def test_bundled_examples_are_valid():
    root = Path(__file__).resolve().parents[2] / "examples"
    single = load_config(root / "packing.yaml")
    assert len(single.tasks) == 1
    assert single.tasks[0].config["system"]["path"] == str(root / "packing.h5")
    sweep = load_config(root / "sweep.yaml")
    assert len(sweep.tasks) == 4
    observed = load_config(root / "observables.yaml").tasks[0].config["sensitivity"]
    assert observed["observables"] == ["pressure", "energy",
                                       {"position": {"particle": 7, "axis": None}}]


def test_paths_are_relative_to_the_config_folder(folder: Path, monkeypatch):
    sub = folder / "configs"
    sub.mkdir()
    (sub / "local.h5").write_bytes(b"")
    path = write(sub, "system: {path: local.h5}\noutput: {directory: results}\n")
    monkeypatch.chdir(folder)
    config = load_config(path).tasks[0].config
    assert config["system"]["path"] == str(sub / "local.h5")
    assert config["output"]["directory"] == str(sub / "results")


def test_yaml_1_1_exponents_without_a_dot_are_numbers(folder: Path):
    path = write(folder, "system: {path: packing.h5}\nminimizer: {ftol: 1e-13, max_steps: 2e5}\n")
    config = load_config(path).tasks[0].config
    assert config["minimizer"]["ftol"] == 1e-13
    assert config["minimizer"]["max_steps"] == 200000
    assert isinstance(config["minimizer"]["max_steps"], int)


def test_empty_value_takes_the_default(folder: Path):
    path = write(folder, "system: {path: packing.h5}\nminimizer:\n  ftol:\n")
    assert load_config(path).tasks[0].config["minimizer"]["ftol"] == 1e-12


def test_species_matrices_are_accepted(folder: Path):
    path = write(folder, "system: {path: packing.h5}\npotential: {epsilon: [[1, 2], [2, 1.5]]}\n")
    assert load_config(path).tasks[0].config["potential"]["epsilon"] == [[1.0, 2.0], [2.0, 1.5]]


def test_resolve_config_directly_reports_errors_without_raising(folder: Path):
    resolved, errors = resolve_config({"system": {"path": "packing.h5"}}, folder)
    assert errors == []
    assert resolved["system"]["path"] == str(folder / "packing.h5")
    _, errors = resolve_config(["not", "a", "mapping"], folder)
    assert errors and "mapping" in errors[0]


# --- every documented error -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("system: {path: packing.h5}\nsolver: cg\n", "unknown key 'solver'"),
        ("system: {path: packing.h5}\nminimizer: {ftoll: 1.0e-9}\n",
         "unknown key 'minimizer.ftoll': did you mean 'minimizer.ftol'?"),
        ("system: {path: packing.h5}\nminimizer: {ftol: -1}\n",
         "minimizer.ftol = -1: must be a number >= 0"),
        ("system: {path: packing.h5}\nminimizer: {max_steps: 10.5}\n",
         "minimizer.max_steps = 10.5: must be an integer >= 1"),
        ("system: {path: packing.h5}\nminimizer: {max_steps: lots}\n",
         "minimizer.max_steps = 'lots': must be an integer >= 1"),
        ("system: {path: packing.h5}\nminimizer: {kind: bfgs}\n",
         "minimizer.kind = 'bfgs': must be one of fire, gradient_descent"),
        ("system: {path: packing.h5}\nminimizer: {f_dec: 1.5}\n",
         "minimizer.f_dec = 1.5: must be a number > 0 and < 1"),
        ("system: {path: packing.h5}\nminimizer: {ftol: 0, etol: 0}\n",
         "ftol and etol cannot both be 0"),
        ("system: {path: packing.h5}\nsensitivity: {solver: lu2}\n",
         "sensitivity.solver = 'lu2': must be one of cg, minres, gmres"),
        ("system: {path: packing.h5}\nsensitivity: {tol: 0}\n", "sensitivity.tol = 0: must be a number > 0"),
        ("system: {path: packing.h5}\nsensitivity: {audit: maybe}\n",
         "sensitivity.audit = 'maybe': must be true or false"),
        ("system: {path: packing.h5}\npotential: {kind: coulomb}\n",
         "potential.kind = 'coulomb': must be null or one of soft_sphere, lennard_jones, morse"),
        ("system: {path: packing.h5}\npotential: {alpha: 1}\n", "potential.alpha = 1: must be null or a number > 1"),
        ("system: {path: packing.h5}\npotential: {epsilon: [[1, 2]]}\n",
         "square [S][S] list"),
        ("system: {path: packing.h5}\npotential: {neighbor_list: sometimes}\n",
         "potential.neighbor_list = 'sometimes': must be null or one of auto or true or false"),
        ("system: {path: packing.h5}\npotential: {kind: lennard_jones, r_onset: 3, r_cutoff: 2.5}\n",
         "potential.r_cutoff = 2.5: must be > potential.r_onset = 3"),
        ("system: {path: packing.h5}\npotential: {sigma: 1.0}\n",
         "potential.sigma = 1.0: sigma is for lennard_jones/morse"),
        ("system: {path: packing.h5}\noutput: {plots: 1}\n", "output.plots = 1: must be true or false"),
        ("system: {path: packing.h5}\noutput: [a]\n", "output = [a]: must be a mapping"),
        ("system: {path: packing.h5}\nseed: -3\n", "seed = -3: must be an integer >= 0"),
        ("system: {path: packing.h5}\nslurm: {time: soon}\n", "slurm.time = 'soon': must be a Slurm time limit"),
        ("system: {path: packing.h5}\nslurm: {mem: 4 GB}\n", "slurm.mem = '4 GB': must be a Slurm memory size"),
        ("system: {group: all}\n", "system.path is required"),
        ("system: 5\n", "system = 5: must be a mapping"),  # one line, not also "is required"
        ("system: {path: missing.h5}\n", "system.path = 'missing.h5' ("),
        ("system: {path: .}\n", "is a folder, not a file"),
        ("system: {path: packing.h5}\nparameters: {}\n", "parameters = {}: must be a non-empty list"),
        ("system: {path: packing.h5}\nparameters: [3]\n", "parameters[0] = 3: must be a mapping"),
        ("system: {path: packing.h5}\nparameters: [{name: d, kind: diameter}]\n",
         "parameters[0].species is required for kind diameter"),
        ("system: {path: packing.h5}\nparameters: [{name: b, kind: box, species: 1}]\n",
         "parameters[0].species = 1: kind box takes no species"),
        ("system: {path: packing.h5}\nparameters: [{name: b, kind: volume}]\n",
         "parameters[0].kind = 'volume': must be one of diameter, diameters, epsilon, box"),
        ("system: {path: packing.h5}\nparameters: [{kind: box}]\n", "parameters[0].name is required"),
        ("system: {path: packing.h5}\nparameters: [{name: a/b, kind: box}]\n",
         "parameters[0].name = 'a/b': must be a name of letters"),
        ("system: {path: packing.h5}\nparameters: [{name: b, kind: box, extra: 1}]\n",
         "unknown key 'parameters[0].extra'"),
        ("system: {path: packing.h5}\nparameters: [{name: e, kind: epsilon}, {name: e, kind: box}]\n",
         "parameters[1].name = 'e': already used by parameters[0]"),
        ("system: {path: packing.h5}\nsweep: [1, 2]\n", "sweep = [1, 2]: must map dotted key paths"),
        ("system: {path: packing.h5}\nsweep: {minimizer.ftoll: [1]}\n",
         "sweep key 'minimizer.ftoll' is not a config key a sweep can vary: did you mean 'minimizer.ftol'?"),
        ("system: {path: packing.h5}\nsweep: {seed: []}\n", "sweep.seed = []: must be a non-empty list"),
        ("system: {path: packing.h5}\nsweep: {slurm.time: ['1:00']}\n", "sweep key 'slurm.time'"),
        ("system: {path: packing.h5}\nsweep: {potential.alpha: [2.0, 0.5]}\n",
         "sweep.potential.alpha[1] = 0.5: must be null or a number > 1"),
        ("sweep: {system.path: [a.h5, c.h5]}\n", "sweep.system.path[1] = 'c.h5' ("),
        ("system: {path: packing.h5}\nsensitivity: {many_rhs: cholmod}\n",
         "sensitivity.many_rhs = 'cholmod': must be one of auto, dense, factorization, iterative"),
        ("system: {path: packing.h5}\nsensitivity: {max_result_gib: 0}\n",
         "sensitivity.max_result_gib = 0: must be null or a number > 0"),
        ("system: {path: packing.h5}\nsensitivity: {mode: backward}\n",
         "sensitivity.mode = 'backward': must be one of auto, forward, reverse"),
        ("system: {path: packing.h5}\nsensitivity: {observables: [pressure, volume]}\n",
         "sensitivity.observables = [pressure, volume]: must be a list whose items are "
         "energy, pressure or {position: {particle: i, axis: a}} (i an integer >= 0, axis "
         "optional: 0, 1, 2 or null); item 1 = 'volume' is not"),
        ("system: {path: packing.h5}\nsensitivity: {observables: [{position: {axis: 1}}]}\n",
         "sensitivity.observables = [{position: {axis: 1}}]: must be a list"),
        ("system: {path: packing.h5}\nsensitivity: {observables: pressure}\n",
         "sensitivity.observables = 'pressure': must be a list whose items"),
        ("system: {path: packing.h5}\nsensitivity: {mode: reverse}\n",
         "sensitivity.mode = 'reverse': needs sensitivity.observables (e.g. [pressure])"),
        ("[1, 2]\n", "the config must be a mapping of sections"),
        ("system: {path: packing.h5\n", "not valid YAML"),
    ],
)
def test_config_errors_name_key_value_and_what_is_allowed(folder: Path, text: str, expected: str):
    message = one_error(write(folder, text))
    assert expected in message, message


def test_yaml_syntax_error_names_the_line(folder: Path):
    message = one_error(write(folder, "system:\n  path: packing.h5\nminimizer: {ftol: [\n"))
    assert "line " in message and "not valid YAML" in message
    # a tab where YAML wants spaces: PyYAML's wording, which names the character
    message = one_error(write(folder, "system:\n\tpath: packing.h5\n"))
    assert "line 2, column 1" in message and "found character '\\t'" in message, message


def test_several_mistakes_are_all_reported(folder: Path):
    path = write(folder, "system: {path: packing.h5}\nminimizer: {ftol: -1, kind: x}\nfoo: 1\n")
    errors = errors_of(path)
    assert len(errors) == 3
    assert all(e.startswith(str(path)) for e in errors)


def test_missing_and_folder_config_files(folder: Path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(folder / "nope.yaml")
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(folder)


#: b: &b [*a, ... ten times], c: &c [*b, ...], ... h: ten lists of ten lists ... of "x"
_LAUGHS = "".join(f"{chr(97 + k)}: &{chr(97 + k)} [{', '.join([f'*{chr(96 + k)}'] * 10)}]\n"
                  for k in range(1, 8))


@pytest.mark.parametrize("text, expected", [
    # eight nested lists of ten aliases: 10^8 values in 300 bytes (a "billion laughs")
    ('a0: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]\n' + _LAUGHS,
     "more than 1,000,000 values once its YAML aliases are expanded"),
    ("system: {path: packing.h5}\nparameters: &p [{name: d, kind: diameter}, *p]\n",
     "contains itself"),
    ("system: {path: packing.h5, group: " + "[" * 40 + "]" * 40 + "}\n", "more than 32 levels"),
    ("system: {path: packing.h5, group: " + "[" * 5000 + "]" * 5000 + "}\n",
     "more than 32 levels"),  # past Python's recursion limit inside PyYAML
])
def test_alias_bombs_cycles_and_deep_nesting_are_refused_in_one_line(folder, text, expected):
    assert expected in one_error(write(folder, text))


def test_aliases_that_share_a_block_are_allowed(folder: Path):
    path = write(folder, "system: {path: packing.h5}\nparameters: [&d {name: d, kind: diameter,"
                         " species: 0}]\nsweep: {parameters: [[*d], [*d]]}\n")
    assert len(load_config(path).tasks) == 2


def test_structure_counts_each_alias_as_its_expansion():
    from sensitivity.systems.schema import MAX_CONFIG_VALUES, structure_error

    leaf = list(range(999))  # 1,000 values with its list
    assert structure_error([leaf] * 999) is None  # 999,001 values, 1,000 distinct
    assert "more than" in structure_error([leaf] * 1001)
    assert MAX_CONFIG_VALUES == 1_000_000


def test_pipes_devices_and_huge_files_are_refused_before_reading(folder: Path):
    fifo = folder / "fifo.yaml"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer
    assert "not a regular file" in one_error(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config("/dev/zero")  # would never end
    from sensitivity.systems.schema import MAX_CONFIG_BYTES

    big = folder / "big.yaml"
    with open(big, "wb") as stream:
        stream.truncate(MAX_CONFIG_BYTES + 1)  # sparse: nothing is written
    assert "larger than 16 MiB" in one_error(big)
    binary = folder / "binary.yaml"
    binary.write_bytes(b"seed: \xff\n")
    assert "not UTF-8" in one_error(binary)
    # the packing it names: the same
    assert "system.path = '/dev/zero': is not a regular file" in one_error(
        write(folder, "system: {path: /dev/zero}\n"))


def test_empty_config_asks_for_the_input(folder: Path):
    assert "system.path is required" in one_error(write(folder, ""))


def test_file_check_can_be_skipped(folder: Path):
    path = write(folder, "system: {path: missing.h5}\n")
    assert load_config(path, check_files=False).tasks[0].config["system"]["path"].endswith("missing.h5")


# --- --set overrides ----------------------------------------------------------------------------


def test_parse_override_reads_yaml_scalars():
    assert parse_override("minimizer.ftol=1e-13") == (["minimizer", "ftol"], "1e-13")
    assert parse_override("minimizer.max_steps=100") == (["minimizer", "max_steps"], 100)
    assert parse_override("output.plots=false") == (["output", "plots"], False)
    assert parse_override("potential.sigma=null") == (["potential", "sigma"], None)
    assert parse_override("parameters.0.species=1") == (["parameters", 0, "species"], 1)
    assert parse_override("sweep.system.path=[a.h5, b.h5]") == (["sweep", "system.path"], ["a.h5", "b.h5"])


@pytest.mark.parametrize(
    "text, expected",
    [("minimizer.ftol", "expected key.path=value"), ("=3", "is empty"), ("a..b=1", "empty part"),
     ("seed=[1", "not valid YAML"), ("sweep.seed=&a [1, *a]", "contains itself"),
     ("seed=" + "[" * 3000 + "]" * 3000, "more than 32 levels")],
)
def test_bad_overrides(text: str, expected: str):
    with pytest.raises(ConfigError, match="--set") as info:
        parse_override(text)
    assert expected in str(info.value)


def test_overrides_apply_before_validation(folder: Path, monkeypatch):
    path = write(folder, "system: {path: packing.h5}\nminimizer: {ftol: 1.0e-9}\n")
    loaded = load_config(path, ["minimizer.ftol=1e-13", "parameters.0.species=1", "seed=7"])
    config = loaded.tasks[0].config
    assert config["minimizer"]["ftol"] == 1e-13
    assert config["parameters"][0]["species"] == 1
    assert config["seed"] == 7
    assert "--set" not in "".join(errors_of(path, ["minimizer.ftol=-1"]))
    assert "minimizer.ftol = -1" in one_error(path, ["minimizer.ftol=-1"])
    with pytest.raises(ConfigError, match="no such list entry"):
        load_config(path, ["parameters.3.species=1"])
    with pytest.raises(ConfigError, match="unknown key 'minimizer.fto'"):
        load_config(path, ["minimizer.fto=1"])


def test_override_paths_are_relative_to_the_current_folder(folder: Path, monkeypatch):
    sub = folder / "configs"
    sub.mkdir()
    path = write(sub, "system: {path: ../packing.h5}\n")
    monkeypatch.chdir(folder)
    config = load_config(path, ["system.path=a.h5"], output="results").tasks[0].config
    assert config["system"]["path"] == str(folder / "a.h5")
    assert config["output"]["directory"] == str(folder / "results")
    loaded = load_config(path, ["sweep.system.path=[a.h5, b.h5]"])
    assert [t.config["system"]["path"] for t in loaded.tasks] == [str(folder / "a.h5"), str(folder / "b.h5")]


# --- sweeps -----------------------------------------------------------------------------------------


def test_sweep_expands_to_the_cartesian_product(folder: Path):
    path = write(
        folder,
        "system: {path: packing.h5}\noutput: {directory: runs}\n"
        "sweep:\n  system.path: [a.h5, b.h5]\n  potential.alpha: [2, 2.5, 3]\n",
    )
    loaded = load_config(path)
    assert len(loaded.tasks) == 6
    assert [t.index for t in loaded.tasks] == list(range(6))
    first, last = loaded.tasks[0], loaded.tasks[-1]
    assert first.sweep_values == {"system.path": str(folder / "a.h5"), "potential.alpha": 2.0}
    assert loaded.tasks[1].sweep_values["potential.alpha"] == 2.5  # the last key varies fastest
    assert last.sweep_values == {"system.path": str(folder / "b.h5"), "potential.alpha": 3.0}
    assert first.directory == folder / "runs" / "task-0000"
    assert last.config["output"]["directory"] == str(folder / "runs" / "task-0005")
    assert last.config["potential"]["alpha"] == 3.0
    assert "sweep" not in last.config
    assert loaded.output_directory == folder / "runs"
    assert loaded.sweep["potential.alpha"] == [2.0, 2.5, 3.0]
    assert "potential.alpha=2.5" in loaded.tasks[1].label
    with pytest.raises(ConfigError, match=r"--task-index 6: this config has 6 task\(s\); use 0..5"):
        loaded.task(6)


def test_sweep_of_whole_parameter_lists(folder: Path):
    path = write(
        folder,
        "system: {path: packing.h5}\nsweep:\n  parameters:\n"
        "    - [{name: d, kind: diameter, species: 0}]\n    - [{name: b, kind: box}]\n",
    )
    loaded = load_config(path)
    assert [t.config["parameters"][0]["name"] for t in loaded.tasks] == ["d", "b"]
    assert loaded.tasks[1].config["parameters"][0]["species"] is None


def test_task_directory_names_widen_for_big_sweeps():
    assert task_directory_name(3, 10) == "task-0003"
    assert task_directory_name(12, 20000) == "task-00012"


def test_dump_yaml_round_trips(folder: Path):
    import yaml

    from sensitivity.systems.config import dump_yaml

    config = load_config(write(folder, "system: {path: packing.h5}\n")).tasks[0].config
    assert yaml.safe_load(dump_yaml(config)) == config
    # The dumped resolved config is itself a valid config.
    again = load_config(write(folder, dump_yaml(config), "again.yaml")).tasks[0].config
    assert again == config


def test_dump_yaml_writes_pyyamls_own_text():
    """libyaml's emitter (where PyYAML has it) writes what PyYAML's Python emitter writes,
    hostile strings, special floats and non-ASCII text included."""
    import math

    import yaml

    from sensitivity.systems.config import dump_yaml

    data = {
        "system": {"path": "run $(touch X) `y` 'q' \"d\" # x\nline\ttab é 中文 \u2028 \x85",
                   "long": "a" * 250 + " b" * 80},
        "floats": [1e-12, 0.1, 1e300, math.inf, -math.inf, math.nan, -0.0, 3.0000000000000004],
        "ints": [0, -1, 2**62], "none": None, "bools": [True, False], "empty": {}, "list": [],
        "strings": ["yes", "no", "on", "null", "~", "1e5", "0x10", "", " lead", "trail ",
                    "a: b", "- x", "[x]", "{x}", "%x", "@x", "!x", "*x", "&x", "|", ">", "'"],
        "nested": [{"a": [1, {"b": None}]}, [[]]], "ké y": 2,
    }
    python = yaml.dump(data, Dumper=yaml.SafeDumper, sort_keys=False,
                       default_flow_style=False, width=100)
    assert dump_yaml(data) == python
    back = yaml.safe_load(dump_yaml(data))
    assert back["system"] == data["system"] and back["strings"] == data["strings"]


def test_config_parser_reads_what_pyyamls_own_parser_reads():
    """libyaml's parser (where PyYAML has it) gives PyYAML's Python parser's values: YAML
    1.1's implicit types (exponents without a dot stay strings), anchors, special floats,
    dates, non-ASCII text, every bundled example; and a syntax error at the same line."""
    import math

    import yaml

    from sensitivity.systems import config

    examples = Path(__file__).resolve().parents[2] / "examples"
    texts = [path.read_text() for path in sorted(examples.glob("*.yaml"))]
    texts.append(
        "a: [1e-13, 1.0e-13, 1e5, .inf, -.Inf, .nan, 0x10, 0o17, 010, 1_000, +1, -0.0]\n"
        "b: [yes, no, on, off, ~, null, '', 'yes', 2026-12-07, 2026-12-07 10:00:00]\n"
        "c: &c {x: [1, {y: ké}], z: \"\\u2028 \\t tab\"}\n"
        "d: [*c, *c]\n"
        "e: |\n  two\n  lines\n")
    assert len(texts) >= 5
    for text in texts:
        ours = yaml.load(text, Loader=config._SAFE_LOADER)
        theirs = yaml.load(text, Loader=yaml.SafeLoader)
        assert repr(ours) == repr(theirs)  # NaN != NaN: compare the reprs
    assert math.isnan(ours["a"][5]) and ours["a"][0] == "1e-13" and ours["d"][0] is ours["d"][1]
    for Loader in (config._SAFE_LOADER, yaml.SafeLoader):
        with pytest.raises(yaml.YAMLError) as info:
            yaml.load("a: 1\nb: [2,\nc: 3\n", Loader=Loader)
        assert info.value.problem_mark.line + 1 == 4  # the end of the stream


def test_environment_is_not_consulted(folder: Path, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    loaded = load_config(write(folder, "system: {path: packing.h5}\nsweep: {seed: [1, 2, 3]}\n"))
    assert len(loaded.tasks) == 3
    assert os.environ["SLURM_ARRAY_TASK_ID"] == "1"


def test_an_empty_sweep_list_is_explained_with_a_readable_example(folder: Path):
    """The example value comes from the key's default; a required key (system.path) has none,
    and its message once showed Python's placeholder object."""
    (folder / "c.yaml").write_text("system: {path: packing.h5}\nsweep: {system.path: []}\n")
    with pytest.raises(ConfigError) as error:
        load_config(folder / "c.yaml")
    message = str(error.value)
    assert "sweep.system.path = []: must be a non-empty list of values" in message
    assert "object at" not in message


def test_an_array_task_leaves_a_manifest_that_describes_its_sweep(folder: Path, monkeypatch):
    """`run` of one task of a sweep (a Slurm array task) rewrites `sweep.json` only when it
    does not describe this sweep: writing it costs a config digest per task, for every task
    of the array."""
    from sensitivity.systems import tasks as task_module
    from sensitivity.systems.manifest import MANIFEST_NAME, find_tasks, write_manifest

    text = ("system: {path: a.h5}\noutput: {directory: out}\n"
            "sweep: {system.path: [a.h5, b.h5], potential.alpha: [2.0, 2.5]}\n")
    loaded = load_config(write(folder, text))
    manifest = folder / "out" / MANIFEST_NAME
    assert write_manifest(loaded, running=[loaded.task(1)]) == manifest  # none yet: written
    first = manifest.stat().st_ino, manifest.read_text()
    assert [t["index"] for t in find_tasks(folder / "out")] == [0, 1, 2, 3]

    digests = []
    real = task_module.config_digest
    monkeypatch.setattr(task_module, "config_digest",
                        lambda config: digests.append(1) or real(config))
    write_manifest(loaded, running=[loaded.task(2)])  # the same sweep: left as it is
    assert (manifest.stat().st_ino, manifest.read_text()) == first
    assert len(digests) == 1  # the running task's alone
    # another config for the same folder (an override): rewritten, with its digests
    changed = load_config(write(folder, text), ["minimizer.ftol=1e-11"])
    write_manifest(changed, running=[changed.task(2)])
    assert manifest.stat().st_ino != first[0]
    assert json.loads(manifest.read_text())["overrides"] == ["minimizer.ftol=1e-11"]
    # the whole sweep in one process writes it, as before
    digests.clear()
    write_manifest(loaded, running=loaded.tasks)
    assert len(digests) == 4 and json.loads(manifest.read_text())["overrides"] == []


def test_one_task_of_a_sweep_is_resolved_alone_and_equals_the_full_resolution(
        folder: Path, monkeypatch):
    """`load_config(only=i)` (a Slurm array task) resolves task i (and the first, for the
    base) and the others only when asked for, each equal to the full resolution; the cost
    no longer grows with the number of tasks."""
    from sensitivity.systems import config as config_module

    text = ("system: {path: a.h5}\noutput: {directory: out}\n"
            "sweep: {system.path: [a.h5, b.h5], potential.alpha: [2.0, 2.5, 3.0]}\n")
    path = write(folder, text)
    full = load_config(path)
    for index in range(6):
        one = load_config(path, only=index)
        assert len(one.tasks) == 6 and one.base == full.base and list(one.sweep) == list(full.sweep)
        for k in (index, 5 - index):  # the selected task, then another, resolved on demand
            a, b = one.task(k), full.task(k)
            assert (a.index, a.config, a.directory, a.sweep_values) == \
                (b.index, b.config, b.directory, b.sweep_values)
    assert [t.index for t in load_config(path, only=3).tasks] == list(range(6))
    with pytest.raises(ConfigError, match="this config has 6 task"):
        load_config(path, only=6).task(6)

    calls = []
    real = config_module.resolve_config
    monkeypatch.setattr(config_module, "resolve_config",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    many = write(folder, "system: {path: a.h5}\nsweep: {potential.epsilon: "
                         f"[{', '.join(str(1 + i / 1000) for i in range(1000))}]}}\n", "many.yaml")
    assert load_config(many, only=777).task(777).sweep_values == {"potential.epsilon": 1 + 777 / 1000}
    assert len(calls) == 2  # task 777 and task 0 (the base), not 1,000

    # a broken task elsewhere does not stop this one; a broken selected task is reported
    broken = write(folder, "system: {path: a.h5}\nsweep: {potential.alpha: [2.0, -1.0]}\n",
                   "broken.yaml")
    assert load_config(broken, only=0).task(0).config["potential"]["alpha"] == 2.0
    with pytest.raises(ConfigError, match=r"sweep.potential.alpha\[1\]"):
        load_config(broken, only=1)
    with pytest.raises(ConfigError, match=r"sweep.potential.alpha\[1\]"):
        load_config(broken)


@pytest.mark.parametrize("args, env, expected", [
    (["--task-index", "3"], {}, 3), ([], {"SLURM_ARRAY_TASK_ID": "2"}, 2), ([], {}, None)])
def test_run_and_check_resolve_only_their_array_task(folder: Path, monkeypatch, args, env,
                                                     expected):
    from click.testing import CliRunner

    from sensitivity.cli import main as cli_main

    seen = []

    def stop(*a, **kwargs):
        seen.append(kwargs.get("only"))
        raise ConfigError("stopped here")

    monkeypatch.setattr(cli_main, "load_config", stop)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    path = write(folder, "system: {path: a.h5}\n")
    for command in ("run", "check"):
        result = CliRunner().invoke(cli_main.main, [command, str(path), *args], env=env)
        assert result.exit_code == 2 and "stopped here" in result.output, result.output
    assert seen == [expected, expected]
