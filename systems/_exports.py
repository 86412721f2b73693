"""Traced and lowered physics functions kept on disk across processes (``jax.export``).

JAX's persistent compilation cache skips XLA's compilation in a new process, but finding an
executable in it takes the function's StableHLO, so every process still traces and lowers
each function: about 1.5 s for the 7 functions of a small run, longer than relaxing and
differentiating a packing of N = 256. Here the lowered module is kept as well, serialized
by ``jax.export``, beside the compilation cache (``<jax_compilation_cache_dir>/exports``).
A later process with the same key loads it and compiles only a thin call of it, which the
persistent cache then finds.

The key must determine the traced program exactly, or a process would run another
program's code. It is built from values only (:func:`stable_key`):

- the function (by its module and qualified name) and its static settings;
- the arguments' pytree structure with every node's static data, and each leaf's shape,
  dtype and weak type;
- the source of this package and of jax-md (a digest of their files), the versions of
  jax, jaxlib, NumPy and Python, the backend, and the jax settings that change tracing.

A value that has no such description (an object of an unknown class, a tracer, a closure
over one) makes the function unkeyable: it is then traced and lowered as before, never
cached. Module-level values the code reads while tracing are taken to be what its source
files say: a process that reassigns them at run time (as some tests do, to force a code
path) must run with the compilation cache off, as it would already get the programs this
process compiled before the change (:mod:`systems._compile` keys the same way). Files are
never deleted: those of an older version or source are simply not read again (delete the
``exports`` folder to reclaim the space). Unreadable, truncated or mismatched files are ignored and rewritten; files are
written to a temporary name and renamed, so concurrent Slurm tasks never see half a file.
The output's pytree structure is stored with the module; the static objects it shares with
the inputs (a neighbor list's functions) are stored as references to the current call's
inputs, and only the classes of this package, jax, jax-md, NumPy and the Python containers
may be named in it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import functools
import hashlib
import io
import os
import pickle
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["Unkeyable", "compile_function", "directory", "missing", "stable_key"]

FORMAT = 1
_MAGIC = b"sensitivity-export\n"
_SUBDIR = "exports"


class Unkeyable(TypeError):
    """A value that has no description by value (so no key for the disk cache)."""


# ---- keys ---------------------------------------------------------------------------------
def _global_name(obj) -> tuple | None:
    """``(module, qualname)`` if ``obj`` is reachable under that name (a module-level
    function, class, or object such as a ``custom_jvp``), else None."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    if module == "builtins" and isinstance(obj, type):  # NoneType is not a builtins name
        return (module, qualname)
    target = sys.modules.get(module)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return (module, qualname) if target is obj else None


def _array_key(a: np.ndarray) -> tuple:
    a = np.ascontiguousarray(a)
    return ("array", a.dtype.str, a.shape, hashlib.sha256(a.tobytes()).hexdigest())


def _encode(obj, active: set) -> Any:
    """A nested tuple of primitives describing ``obj`` by value; raises :class:`Unkeyable`."""
    if obj is None or isinstance(obj, (bool, str, bytes)):
        return obj
    if isinstance(obj, int) and type(obj) is int:
        return ("int", obj)
    if type(obj) is float:
        return ("float", obj.hex())
    if type(obj) is complex:
        return ("complex", obj.real.hex(), obj.imag.hex())
    if isinstance(obj, jax.core.Tracer):
        raise Unkeyable("a tracer")
    if isinstance(obj, (np.ndarray, np.generic)):
        return _array_key(np.asarray(obj))
    if isinstance(obj, jax.Array):
        return _array_key(np.asarray(obj))
    if isinstance(obj, np.dtype):
        return ("dtype", obj.str)
    if isinstance(obj, enum.Enum):
        return ("enum", _type_name(type(obj)), obj.name)
    if isinstance(obj, type):
        name = _global_name(obj)
        if name is None:
            raise Unkeyable(f"the local class {obj!r}")
        return ("type", *name)
    if id(obj) in active:  # a closure that reaches itself
        return ("cycle", type(obj).__qualname__)
    active = active | {id(obj)}
    stable = getattr(type(obj), "__stable_key__", None)
    if stable is not None:
        return ("stable", _type_name(type(obj)), _encode(stable(obj), active))
    if isinstance(obj, tuple) and hasattr(type(obj), "_fields"):  # a named tuple
        return ("namedtuple", _type_name(type(obj)), tuple(_encode(v, active) for v in obj))
    if type(obj) in (tuple, list):
        return (type(obj).__name__, tuple(_encode(v, active) for v in obj))
    if type(obj) in (set, frozenset):
        return ("set", tuple(sorted(repr(_encode(v, active)) for v in obj)))
    if type(obj) is dict:
        items = sorted((repr(_encode(k, active)), _encode(v, active)) for k, v in obj.items())
        return ("dict", tuple(items))
    if dataclasses.is_dataclass(obj):
        return ("dataclass", _type_name(type(obj)),
                tuple((f.name, _encode(getattr(obj, f.name), active))
                      for f in dataclasses.fields(obj)))
    if isinstance(obj, functools.partial):
        return ("partial", _encode(obj.func, active), _encode(obj.args, active),
                _encode(obj.keywords, active))
    if isinstance(obj, types.MethodType):
        return ("method", _encode(obj.__self__, active), obj.__func__.__qualname__)
    name = _global_name(obj)
    if name is not None:
        return ("global", *name)
    if isinstance(obj, types.FunctionType):  # a closure: its code's name and what it holds
        cells = tuple(_encode(c.cell_contents, active) for c in obj.__closure__ or ())
        return ("closure", obj.__module__, obj.__qualname__, cells,
                _encode(obj.__defaults__, active), _encode(obj.__kwdefaults__, active))
    raise Unkeyable(f"an object of type {type(obj).__module__}.{type(obj).__qualname__}")


def _type_name(cls: type) -> tuple:
    name = _global_name(cls)
    if name is None:
        raise Unkeyable(f"the local class {cls!r}")
    return name


def _walk(treedef):
    """The nodes of ``treedef`` depth first: ``(node type, node data)``, None for a leaf."""
    data = treedef.node_data()
    yield data
    if data is not None:
        for child in treedef.children():
            yield from _walk(child)


def _tree_key(treedef, active: set) -> tuple:
    return tuple(None if data is None else (_type_name(data[0]), _encode(data[1], active))
                 for data in _walk(treedef))


def _leaf_key(leaf) -> tuple:
    aval = leaf if isinstance(leaf, jax.ShapeDtypeStruct) else jax.typeof(leaf)
    return (tuple(aval.shape), str(aval.dtype), bool(getattr(aval, "weak_type", False)))


@functools.lru_cache(maxsize=1)
def _environment() -> tuple:
    """What the traced programs depend on besides the call: sources, versions, settings."""
    import importlib.util
    from importlib import metadata

    import jaxlib

    here = Path(__file__).resolve().parent
    roots = {Path(p).resolve() for p in sys.modules["sensitivity"].__path__} | {here}
    # jax-md's files without importing it (``import jax_md`` imports all of it: 5 s)
    roots |= {Path(p).resolve()
              for p in importlib.util.find_spec("jax_md").submodule_search_locations}
    digest = hashlib.sha256()
    for root in sorted(roots):
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root.parent)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return (FORMAT, digest.hexdigest(), jax.__version__, jaxlib.__version__, np.__version__,
            sys.version, metadata.version("jax-md"))


def stable_key(fn: Callable, static: Any, args: tuple) -> str:
    """The text that identifies ``jit(partial(fn, static))`` traced at ``args``; raises
    :class:`Unkeyable` where a part has no description by value."""
    leaves, treedef = jax.tree.flatten(args)
    name = _global_name(fn)
    parts = (
        _environment(),
        jax.default_backend(),
        tuple(str(getattr(jax.config, flag)) for flag in (
            "jax_enable_x64", "jax_default_matmul_precision", "jax_numpy_rank_promotion",
            "jax_numpy_dtype_promotion", "jax_default_prng_impl", "jax_enable_checks")),
        ("fn", name) if name is not None else _encode(fn, set()),
        _encode(static, set()),
        _tree_key(treedef, set()),
        tuple(_leaf_key(leaf) for leaf in leaves),
    )
    return repr(parts)


# ---- the files ----------------------------------------------------------------------------
def directory() -> Path | None:
    """Where the modules are kept: beside JAX's compilation cache, None where it is off."""
    base = jax.config.jax_compilation_cache_dir
    return None if not base else Path(base) / _SUBDIR


def _path(folder: Path, key: str) -> Path:
    return folder / (hashlib.sha256(key.encode()).hexdigest() + ".export")


def missing(fn: Callable, static: Any, args: tuple) -> bool:
    """Whether this cache is on and has no program for the call: a first run, whose
    compilations take seconds (the caller may start the next ones early)."""
    folder = directory()
    if folder is None or fn in _NOT_EXPORTABLE:
        return False
    try:
        return not _path(folder, stable_key(fn, static, args)).exists()
    except Unkeyable:
        return False


def _statics(treedef) -> list:
    """The static objects held by the nodes of ``treedef`` (and inside their tuples), in a
    fixed order: what the output's structure may refer to."""
    found: list = []

    def add(value):
        if isinstance(value, (tuple, list)):
            for v in value:
                add(v)
        elif value is not None and not isinstance(value, (bool, int, float, str, bytes)):
            found.append(value)

    for data in _walk(treedef):
        if data is not None:
            add(data[1])
    return found


# What a stored output structure may name: the Python containers, jax's tree classes, and
# classes (named tuples, dataclasses, enums) of this package and of jax-md. Nothing else can
# be called while a file is read.
_ALLOWED_BUILTINS = {"tuple", "list", "dict", "set", "frozenset", "int", "float", "complex",
                     "bool", "str", "bytes", "NoneType"}
_ALLOWED_GLOBALS = {("jaxlib._jax.pytree", "PyTreeDef"), ("jax._src.tree_util", "default_registry")}
_ALLOWED_PACKAGES = ("sensitivity", "jax_md")


class _Pickler(pickle.Pickler):
    def __init__(self, file, statics: list):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._index = {id(obj): i for i, obj in enumerate(statics)}

    def persistent_id(self, obj):
        return self._index.get(id(obj))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, statics: list):
        super().__init__(file)
        self._statics = statics

    def persistent_load(self, pid):
        if not isinstance(pid, int) or not 0 <= pid < len(self._statics):
            raise pickle.UnpicklingError(f"no input object {pid!r}")
        return self._statics[pid]

    def find_class(self, module, name):
        if ((module == "builtins" and name in _ALLOWED_BUILTINS)
                or (module, name) in _ALLOWED_GLOBALS):
            return super().find_class(module, name)
        if module.split(".")[0] in _ALLOWED_PACKAGES and "." not in name:
            found = super().find_class(module, name)
            if isinstance(found, type):
                return found
        raise pickle.UnpicklingError(f"{module}.{name} may not appear in an export")


def _dump(key: str, exported, out_tree, in_tree) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, _statics(in_tree)).dump(out_tree)
    body = pickle.dumps({"key": key, "out_tree": buffer.getvalue(),
                         "module": bytes(exported.serialize()),
                         "custom_calls": "stablehlo.custom_call" in exported.mlir_module()},
                        protocol=pickle.HIGHEST_PROTOCOL)
    return _MAGIC + hashlib.sha256(body).digest() + body


def _load(blob: bytes, key: str, in_tree):
    """``(exported, out_tree, custom_calls)`` from a file's bytes, or None if it is not this
    key's."""
    head = len(_MAGIC)
    if not blob.startswith(_MAGIC) or hashlib.sha256(blob[head + 32:]).digest() != blob[
            head:head + 32]:
        return None
    entry = _Unpickler(io.BytesIO(blob[head + 32:]), []).load()
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    out_tree = _Unpickler(io.BytesIO(entry["out_tree"]), _statics(in_tree)).load()
    exported = jax.export.deserialize(bytearray(entry["module"]))
    if out_tree.num_leaves != len(exported.out_avals):
        return None
    return exported, out_tree, entry.get("custom_calls", True) is not False


def _write(path: Path, blob: bytes) -> None:
    """Write ``blob`` to ``path`` atomically; a cache that cannot be written is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # the umask applies
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        pass


# ---- compiling ----------------------------------------------------------------------------
# jax 0.10 initializes its LAPACK kernels whenever it lowers a call of an exported program on
# the CPU, whatever the program holds; that imports scipy.linalg (0.1-0.25 s, a sizeable part
# of a process that loads its programs from disk). The programs' custom calls (LAPACK's among
# them) are noted when they are exported, and the lowering of a program with none skips the
# initialization, in the thread lowering it. Where jax has no such function the gate is not
# installed and jax does as it does.
_GATE = threading.local()


def _lapack_gate() -> None:
    try:
        from jax._src.export import _export
        original = _export._ensure_backends_initialized
    except (ImportError, AttributeError):
        return
    if getattr(original, "gated", False):
        return

    def ensure_backends_initialized(platforms):
        if not getattr(_GATE, "no_custom_calls", False):
            original(platforms)

    ensure_backends_initialized.gated = True
    _export._ensure_backends_initialized = ensure_backends_initialized


class Executable:
    """A compiled flat function called with the original pytree arguments (whose structure,
    node data included, must be the one it was compiled for, as with ``jit``)."""

    __slots__ = ("_compiled", "_in_tree", "_out_tree", "from_disk")

    def __init__(self, compiled, in_tree, out_tree, from_disk: bool):
        self._compiled = compiled
        self._in_tree = in_tree
        self._out_tree = out_tree
        self.from_disk = from_disk

    def __call__(self, *args):
        leaves, in_tree = jax.tree.flatten(args)
        if in_tree != self._in_tree:
            raise TypeError(f"called with the pytree {in_tree}, compiled for {self._in_tree}")
        return jax.tree.unflatten(self._out_tree, self._compiled(*leaves))


_NOT_EXPORTABLE: set = set()  # functions jax.export refused in this process
_LOCK = threading.Lock()
STATS = collections.Counter()  # "loaded", "exported", "unkeyable", "refused", "plain"


def _plain(fn, static, args):
    return jax.jit(functools.partial(fn, static)).lower(*args).compile()


def compile_function(fn: Callable, static: Any, args: tuple):
    """``jit(partial(fn, static)).lower(*args).compile()``, through the disk cache where the
    compilation cache is on and the call has a key; the result is called like it."""
    folder = directory()
    if folder is None or fn in _NOT_EXPORTABLE:
        STATS["plain"] += 1
        return _plain(fn, static, args)
    try:
        key = stable_key(fn, static, args)
    except Unkeyable:
        STATS["unkeyable"] += 1
        return _plain(fn, static, args)
    leaves, in_tree = jax.tree.flatten(args)
    path = _path(folder, key)
    entry = None
    try:
        entry = _load(path.read_bytes(), key, in_tree)
    except FileNotFoundError:
        pass
    except Exception:  # noqa: BLE001  (a damaged or foreign file: exported again, replaced)
        entry = None
    from_disk = entry is not None
    if entry is None:
        out_trees = []

        def flat(*flat_args):
            out = fn(static, *jax.tree.unflatten(in_tree, flat_args))
            out_leaves, out_tree = jax.tree.flatten(out)
            out_trees.append(out_tree)
            return out_leaves

        try:
            exported = jax.export.export(jax.jit(flat))(*leaves)
            blob = _dump(key, exported, out_trees[-1], in_tree)
            # What a later process reads, not the in-memory export: deserializing drops the
            # outputs' weak types, so this process runs the same program as the next ones.
            entry = _load(blob, key, in_tree)
        except Exception:  # noqa: BLE001  (effects or custom calls export refuses, an
            entry = None   # output structure with classes a file may not name
        if entry is None:
            exe = _plain(fn, static, args)  # an error of the function itself is raised here
            with _LOCK:
                _NOT_EXPORTABLE.add(fn)
            STATS["refused"] += 1
            return exe
        _write(path, blob)
    exported, out_tree, custom_calls = entry
    STATS["loaded" if from_disk else "exported"] += 1
    with _LOCK:
        _lapack_gate()
    _GATE.no_custom_calls = not custom_calls
    try:
        compiled = jax.jit(exported.call).lower(*leaves).compile()
    finally:
        _GATE.no_custom_calls = False
    return Executable(compiled, in_tree, out_tree, from_disk)
