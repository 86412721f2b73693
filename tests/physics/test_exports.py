"""Traced programs kept on disk across processes (``systems._exports``).

The danger of such a cache is a stale hit: a process running a program traced for other
settings. So the key is checked to change with every part of a call (static settings, node
data, shapes, dtypes, weak types, closed-over values), to be equal for equal values built
apart, and to be the same in another process (a subprocess run, then an in-process run that
must load every function). Damaged, foreign or hostile files, an unwritable folder and
functions jax.export refuses all fall back to tracing, with the same results.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sensitivity.systems import _exports
from sensitivity.systems.generate import random_packing
from sensitivity.systems.potentials import PairModel, resolve_potential

ROOT = Path(__file__).resolve().parents[2]


# ---- a pytree with static data that cannot be pickled (like a jax-md neighbor list) ---------
class Maker:
    """Static data holding a closure: keyed by value through ``__stable_key__``."""

    def __init__(self, scale: float):
        self.scale = scale
        self.fn = lambda x: x * scale  # a closure: not picklable

    def __stable_key__(self):
        return ("Maker", self.scale)

    def __eq__(self, other):
        return isinstance(other, Maker) and other.scale == self.scale

    def __hash__(self):
        return hash(self.scale)


@jax.tree_util.register_pytree_node_class
class Box:
    def __init__(self, value, maker: Maker):
        self.value, self.maker = value, maker

    def tree_flatten(self):
        return (self.value,), self.maker

    @classmethod
    def tree_unflatten(cls, maker, children):
        return cls(children[0], maker)


@dataclasses.dataclass(frozen=True)
class Settings:
    power: int
    shift: float


def step(settings: Settings, box: Box, y):
    """Returns a Box holding the input's (unpicklable) static data, and a dict."""
    out = box.maker.fn(box.value) ** settings.power + settings.shift
    return Box(out, box.maker), {"sum": jnp.sum(out * y)}


@pytest.fixture(autouse=True)
def _this_module_may_be_named(monkeypatch):
    """The output structures here hold this module's classes: let a file name them (only
    this package's and jax-md's classes may be named otherwise), and forget refusals."""
    monkeypatch.setattr(_exports, "_ALLOWED_PACKAGES",
                        (*_exports._ALLOWED_PACKAGES, __name__.split(".")[0]))
    monkeypatch.setattr(_exports, "_NOT_EXPORTABLE", set())


@pytest.fixture
def cache(tmp_path):
    """JAX's compilation cache (and so the export cache) in a fresh folder; conftest puts the
    options back after the test."""
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    _exports.STATS.clear()
    return tmp_path / "jax" / "exports"


def _args(scale=2.0, n=5):
    return (Box(jnp.arange(n, dtype=jnp.float64), Maker(scale)), jnp.ones(n))


def _expected(settings, box, y):
    return jax.jit(functools.partial(step, settings))(box, y)


def _same(got, want):
    got_box, got_dict = got
    want_box, want_dict = want
    assert got_box.maker.scale == want_box.maker.scale
    np.testing.assert_array_equal(np.asarray(got_box.value), np.asarray(want_box.value))
    assert list(got_dict) == ["sum"]
    np.testing.assert_array_equal(np.asarray(got_dict["sum"]), np.asarray(want_dict["sum"]))


# ---- keys -----------------------------------------------------------------------------------
def _key(static=Settings(2, 0.5), args=None):
    return _exports.stable_key(step, static, _args() if args is None else args)


def test_the_key_is_equal_for_equal_values_built_apart():
    assert _key() == _key(Settings(2, 0.5), _args())


@pytest.mark.parametrize("change", [
    {"static": Settings(3, 0.5)},
    {"static": Settings(2, 0.25)},
    {"args": _args(scale=3.0)},  # the node's static data
    {"args": _args(n=6)},  # a shape
    {"args": (Box(jnp.arange(5, dtype=jnp.float32), Maker(2.0)), jnp.ones(5))},  # a dtype
    {"args": (Box(jnp.arange(5, dtype=jnp.float64), Maker(2.0)), 1.0)},  # a weak type
    {"args": ([jnp.arange(5.0)], jnp.ones(5))},  # the tree's structure
])
def test_the_key_changes_with_every_part_of_the_call(change):
    assert _key(**change) != _key()


def test_closures_are_keyed_by_what_they_hold():
    def make(c):
        return lambda x: x * c

    assert _exports.stable_key(step, make(1.0), ()) == _exports.stable_key(step, make(1.0), ())
    assert _exports.stable_key(step, make(1.0), ()) != _exports.stable_key(step, make(2.0), ())
    # an array held by a closure counts by its value
    a, b = np.arange(3.0), np.arange(3.0)
    assert _exports.stable_key(step, make(a), ()) == _exports.stable_key(step, make(b), ())
    b[1] = 7
    assert _exports.stable_key(step, make(a), ()) != _exports.stable_key(step, make(b), ())


def test_a_physics_model_is_keyed_by_its_settings():
    system = random_packing(16, dim=2, phi=0.8, seed=0)

    def key(**potential):
        model = PairModel.build(system, resolve_potential(potential, system.n_species))
        return _exports.stable_key(step, None, (model,))

    assert key() == key()
    assert key() != key(alpha=2.5)


def test_values_without_a_description_are_unkeyable():
    class Opaque:
        pass

    with pytest.raises(_exports.Unkeyable):
        _exports.stable_key(step, Opaque(), ())
    with pytest.raises(_exports.Unkeyable):
        _exports.stable_key(step, Settings(2, 0.5), (Box(jnp.ones(2), Opaque()),))


# ---- the cache ------------------------------------------------------------------------------
def test_a_call_is_exported_then_loaded_with_the_same_results(cache):
    settings, args = Settings(2, 0.5), _args()
    first = _exports.compile_function(step, settings, args)
    assert not first.from_disk and len(list(cache.glob("*.export"))) == 1
    other = _args()  # new objects, equal values
    second = _exports.compile_function(step, settings, other)
    assert second.from_disk
    assert _exports.STATS["exported"] == 1 and _exports.STATS["loaded"] == 1
    want = _expected(settings, *args)
    _same(first(*args), want)
    _same(second(*args), want)
    # As with jit, the output's static data is that of the arguments compiled for: the
    # loaded structure refers to this call's objects (the unpicklable closure), not copies.
    assert second(*args)[0].maker is other[0].maker
    assert first(*other)[0].maker is args[0].maker
    with pytest.raises(TypeError, match="pytree"):  # as jit: the structure must be the same
        second(*_args(scale=3.0))


def test_the_cache_is_off_with_the_compilation_cache(tmp_path):
    jax.config.update("jax_compilation_cache_dir", None)  # conftest puts it back
    _exports.STATS.clear()
    exe = _exports.compile_function(step, Settings(2, 0.5), _args())
    assert _exports.STATS == {"plain": 1}
    args = _args()
    _same(exe(*args), _expected(Settings(2, 0.5), *args))


def _only_file(cache: Path) -> Path:
    (path,) = cache.glob("*.export")
    return path


def test_a_damaged_file_is_ignored_and_replaced(cache):
    settings, args = Settings(2, 0.5), _args()
    _exports.compile_function(step, settings, args)
    path = _only_file(cache)
    good = path.read_bytes()
    for damaged in (good[:len(good) // 2], good[:-1] + bytes([good[-1] ^ 1]), b"", b"\0" * 99):
        path.write_bytes(damaged)
        exe = _exports.compile_function(step, settings, args)
        assert not exe.from_disk
        _same(exe(*args), _expected(settings, *args))
        assert _exports.compile_function(step, settings, args).from_disk  # written again


def test_another_calls_file_is_not_used(cache):
    """A file found under this key's name but written for another key (a collision, a copy)
    is not loaded: the whole key is stored and compared."""
    _exports.compile_function(step, Settings(2, 0.5), _args())
    foreign = _only_file(cache).read_bytes()
    settings = Settings(3, 0.5)
    key = _exports.stable_key(step, settings, _args())
    path = cache / (hashlib.sha256(key.encode()).hexdigest() + ".export")
    path.write_bytes(foreign)
    exe = _exports.compile_function(step, settings, _args())
    assert not exe.from_disk
    args = _args()
    _same(exe(*args), _expected(settings, *args))


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch " + str(MARKER),))


MARKER = Path("/nonexistent")


def test_a_hostile_file_runs_nothing(cache, tmp_path):
    """A file with a valid checksum and the right key whose stored structure would call
    ``os.system``: only container, tree and package classes may be named, so it is refused."""
    global MARKER
    MARKER = tmp_path / "pwned"
    settings, args = Settings(2, 0.5), _args()
    _exports.compile_function(step, settings, args)
    path = _only_file(cache)
    blob = path.read_bytes()
    head = len(_exports._MAGIC) + 32
    entry = pickle.loads(blob[head:])
    entry["out_tree"] = pickle.dumps(_Payload())
    body = pickle.dumps(entry)
    path.write_bytes(_exports._MAGIC + hashlib.sha256(body).digest() + body)
    exe = _exports.compile_function(step, settings, args)
    assert not MARKER.exists()
    assert not exe.from_disk
    _same(exe(*args), _expected(settings, *args))
    with pytest.raises(pickle.UnpicklingError):
        _exports._Unpickler(io.BytesIO(pickle.dumps(_Payload())), []).load()


@pytest.mark.filterwarnings("ignore:Error (reading|writing) persistent compilation cache")
def test_an_unwritable_folder_only_costs_the_cache(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    jax.config.update("jax_compilation_cache_dir", str(blocker))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    settings, args = Settings(2, 0.5), _args()
    exe = _exports.compile_function(step, settings, args)
    _same(exe(*args), _expected(settings, *args))


def test_a_function_export_refuses_is_traced_as_before(cache):
    def with_callback(static, x):
        jax.debug.callback(lambda v: None, x)
        return x * static

    x = jnp.arange(3.0)
    exe = _exports.compile_function(with_callback, 2.0, (x,))
    np.testing.assert_array_equal(np.asarray(exe(x)), 2.0 * np.arange(3.0))
    assert _exports.STATS["refused"] == 1 and not list(cache.glob("*.export"))


def test_an_output_class_a_file_may_not_name_is_traced_as_before(cache, monkeypatch):
    monkeypatch.setattr(_exports, "_ALLOWED_PACKAGES", ("sensitivity", "jax_md"))
    settings, args = Settings(2, 0.5), _args()
    exe = _exports.compile_function(step, settings, args)
    _same(exe(*args), _expected(settings, *args))
    assert _exports.STATS["refused"] == 1 and not list(cache.glob("*.export"))


# ---- across processes: a real run ----------------------------------------------------------
def _datasets(path: Path) -> dict:
    out = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "fiu":
            out[name] = obj[()]

    with h5py.File(path) as f:
        f.visititems(visit)
    return out


@pytest.mark.slow  # subprocesses, several seconds
def test_a_second_process_loads_every_program_and_gets_the_same_bits(tmp_path, monkeypatch):
    """A subprocess runs the bundled example and exports its programs; this process then
    runs it again with the same cache: every program comes from disk (so the keys are the
    same in another process), every executable from JAX's persistent cache (no miss), and
    every dataset is bit for bit the subprocess's."""
    from sensitivity.cli.main import main as cli

    for name in ("packing.yaml", "packing.h5"):
        (tmp_path / name).write_bytes((ROOT / "examples" / name).read_bytes())
    cache = tmp_path / "jax"
    env = dict(os.environ, SENSITIVITY_CACHE_DIR=str(cache),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    command = ["run", "packing.yaml", "--set", "output.plots=false"]
    done = subprocess.run([sys.executable, "-m", "sensitivity.cli", "-q", *command,
                           "-o", "first"], check=False, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    exported = len(list((cache / "exports").glob("*.export")))
    assert exported >= 5

    _exports.STATS.clear()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SENSITIVITY_CACHE_DIR", str(cache))
    from sensitivity.systems import relax, response
    relax.clear_compile_cache()  # this worker may hold these programs in memory already
    response.clear_compile_cache()
    misses = []
    listening = [True]
    jax.monitoring.register_event_listener(
        lambda event, **_: listening[0] and event.endswith("cache_misses") and misses.append(1))
    try:
        with pytest.raises(SystemExit) as stop:
            cli(["-q", *command, "-o", "second"], prog_name="sensitivity")
    finally:
        listening[0] = False
    assert stop.value.code == 0
    assert _exports.STATS["loaded"] == exported and _exports.STATS["exported"] == 0
    # and every executable from the persistent cache: the programs the first process
    # compiled ahead from abstract arguments were lowered as the real calls lower them
    assert not misses
    first = _datasets(tmp_path / "first" / "sensitivity.h5")
    second = _datasets(tmp_path / "second" / "sensitivity.h5")
    assert first.keys() == second.keys() and len(first) > 5
    for name in first:
        np.testing.assert_array_equal(second[name], first[name], err_msg=name)


_LAPACK_SCRIPT = """
import sys
import jax
import jax.numpy as jnp
import numpy as np
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_compilation_cache_dir", sys.argv[1])
from sensitivity.systems import _exports

def affine(scale, a):
    return a * scale + 1.0

def spectrum(scale, a):
    return jnp.linalg.eigh(a * scale)[0]

a = np.array([[2.0, 1.0], [1.0, 3.0]])
plain = _exports.compile_function(affine, 2.0, (a,))
print("AFFINE", plain.from_disk, "scipy.linalg" in sys.modules, np.asarray(plain(a)).tolist())
lapack = _exports.compile_function(spectrum, 2.0, (a,))
got = np.asarray(lapack(a))
print("EIGH", lapack.from_disk, np.allclose(got, np.linalg.eigvalsh(2.0 * a), rtol=1e-14))
"""


@pytest.mark.slow  # subprocesses, several seconds
def test_a_loaded_program_initializes_lapack_only_when_it_calls_it(tmp_path):
    """jax initializes LAPACK (importing scipy.linalg) for every exported program it lowers;
    here only for one holding custom calls. A fresh process loads a program without one (no
    scipy.linalg) and then an eigensolver's (LAPACK ready: the right eigenvalues)."""
    script = tmp_path / "lapack.py"
    script.write_text(_LAPACK_SCRIPT)
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    outs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, str(script), str(tmp_path / "jax")], env=env,
                              capture_output=True, text=True, check=False, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        outs.append(done.stdout)
    assert "AFFINE False" in outs[0] and "EIGH False True" in outs[0]  # exported
    assert "AFFINE True False [[5.0, 3.0], [3.0, 7.0]]" in outs[1], outs[1]  # loaded, no LAPACK
    assert "EIGH True True" in outs[1], outs[1]  # loaded, LAPACK initialized, right answer


@pytest.mark.slow  # a first run: every program compiled
def test_a_first_run_compiles_ahead_under_the_keys_used_later(tmp_path, monkeypatch):
    """On a first run the relaxation's chunk and the θs' solve are compiled in a thread while
    the main thread compiles ``_init`` and ``hessian_data``, from abstract arguments: each
    must get the key the main thread asks for next (else it compiles the function again
    under a second key, and a second file appears)."""
    from sensitivity.cli.main import main as cli
    from sensitivity.systems import relax, response

    for name in ("packing.yaml", "packing.h5"):
        (tmp_path / name).write_bytes((ROOT / "examples" / name).read_bytes())
    threads = []
    compile_function = _exports.compile_function

    def recording(fn, static, args):
        threads.append((fn.__name__, threading.current_thread().name))
        return compile_function(fn, static, args)

    monkeypatch.setattr(_exports, "compile_function", recording)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SENSITIVITY_CACHE_DIR", str(tmp_path / "jax"))
    relax.clear_compile_cache()
    response.clear_compile_cache()
    with pytest.raises(SystemExit) as stop:
        cli(["-q", "run", "packing.yaml", "--set", "output.plots=false"], prog_name="sensitivity")
    assert stop.value.code == 0
    names = [name for name, _ in threads]
    assert len(names) == len(set(names)), threads  # each function compiled once
    assert ("_chunk", "compile-ahead") in threads and (
        "_scalar_derivatives", "compile-ahead") in threads, threads
    assert len(list((tmp_path / "jax" / "exports").glob("*.export"))) == len(names)


def test_an_error_of_the_function_itself_is_raised_and_not_taken_for_a_refusal(cache):
    def broken(static, x):
        raise ValueError("the function's own error")

    for _ in range(2):
        with pytest.raises(ValueError, match="own error"):
            _exports.compile_function(broken, 1.0, (jnp.ones(2),))
    assert broken not in _exports._NOT_EXPORTABLE and _exports.STATS["refused"] == 0
