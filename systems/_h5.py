"""Shared HDF5 pieces of the file format: opening a file for reading (checked), building one
atomically, attribute values in and out, nested mappings as groups, and the format's constants
(units, result format version). The layout itself is described in :mod:`systems.io`.

numpy and h5py only: reading never imports jax.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ._atomic import atomic_path
from ._errors import InputError

H5MD_VERSION = (1, 1)

#: Units (H5MD unit strings, https://www.nongnu.org/h5md/modules/units.html). The physics is
#: in reduced units: lengths in the unit of the input packing's coordinates ("sigma"; for
#: `sensitivity generate`, the small diameter is 1) and energies in the potential's ε.
LENGTH_UNIT = "sigma"
ENERGY_UNIT = "epsilon"
UNITS_NOTE = (
    "reduced units: sigma = the length unit of the input packing's coordinates (for "
    "`sensitivity generate`: the small diameter), epsilon = the potential's energy scale"
)

#: The unit of θ for each parameter kind (as H5MD unit strings; "1": dimensionless).
THETA_UNITS = {"diameter": LENGTH_UNIT, "diameters": LENGTH_UNIT, "epsilon": ENERGY_UNIT,
               "box": "1", "strain": "1"}
RESULT_FORMAT = "sensitivity-result"
RESULT_FORMAT_VERSION = 1

# Arrays larger than this many elements are stored as datasets rather than attributes
# (HDF5 attributes are limited to 64 kB).
MAX_ATTRIBUTE_ELEMENTS = 256


#: Links and storage a reader follows: only what is inside the file itself. An external link,
#: external raw storage or a virtual dataset would make the result depend on other files that
#: the provenance hash (of this file's bytes) does not cover, so they are refused.
_MAX_OBJECTS = 100_000


def max_read_bytes() -> int:
    """The largest dataset a reader loads: a quarter of the machine's memory."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def _check_links(handle: h5py.File, label: str) -> None:
    """InputError for an external link, a dangling or looping soft link, external raw storage
    or a virtual dataset anywhere in the file."""
    problems: list[str] = []
    count = 0

    def visit(name: str, link) -> None:
        nonlocal count
        count += 1
        if count > _MAX_OBJECTS:
            return True  # stops the visit (an exception raised here would be mangled by h5py)
        path = "/" + name
        if isinstance(link, h5py.ExternalLink):
            problems.append(f"{path} is an external link to {link.filename}:{link.path}; "
                            "external links are not followed (copy the data into this file)")
        elif isinstance(link, h5py.SoftLink):
            try:
                target = handle.get(path)
            except (KeyError, RuntimeError, OSError, ValueError):
                target = None
            if target is None:
                problems.append(f"{path} is a soft link to {link.path} that does not resolve "
                                "(dangling, or a loop of links)")

    def walk(visit_method, visitor) -> None:
        try:
            visit_method(visitor)
        except (KeyError, RuntimeError, OSError, ValueError, SystemError) as error:
            raise InputError(f"{label}: cannot list its contents "
                             f"({' '.join(str(error).split())}); the file is damaged") from None

    walk(handle.visititems_links, visit)
    if count > _MAX_OBJECTS:
        raise InputError(f"{label}: holds more than {_MAX_OBJECTS} objects; not a packing or "
                         "result file")
    if problems:
        raise InputError(f"{label}: {problems[0]}")

    def datasets(name: str, item) -> None:
        if isinstance(item, h5py.Dataset):
            if item.external:
                problems.append(f"/{name} keeps its data in external file(s) "
                                f"{[e[0] for e in item.external]}; store it inside this file")
            elif item.is_virtual:
                problems.append(f"/{name} is a virtual dataset mapping other files; store its "
                                "data inside this file")

    walk(handle.visititems, datasets)
    if problems:
        raise InputError(f"{label}: {problems[0]}")


def checked_read(dataset: h5py.Dataset, path: str, label: str, index: int | None = None):
    """Read a dataset (or one frame of it) after checking that its size is sensible."""
    shape = dataset.shape[1:] if index is not None else dataset.shape
    size = int(np.prod(shape, dtype=np.float64)) if shape is not None else 0
    nbytes = size * dataset.dtype.itemsize
    if nbytes > max_read_bytes():
        raise InputError(
            f"{label}: {path} declares shape {dataset.shape} ({nbytes / 2**30:.1f} GiB), more "
            f"than this machine can read (limit {max_read_bytes() / 2**30:.1f} GiB)")
    if size and dataset.id.get_storage_size() == 0 and dataset.fillvalue is not None \
            and not dataset.chunks:
        raise InputError(f"{label}: {path} declares shape {dataset.shape} but holds no data "
                         "(never written)")
    if index is None:
        return np.asarray(dataset[()])
    return np.asarray(dataset[index])


@contextlib.contextmanager
def open_for_reading(path: str | os.PathLike) -> Iterator[tuple[h5py.File, str]]:
    """Open an HDF5 file for reading; InputError if it is missing, not HDF5, damaged, or
    reaches outside itself (external links or storage).

    Any low-level failure while the caller reads (a corrupt chunk, an attribute of an
    unexpected type) becomes an InputError naming the file, never a traceback.
    """
    label = os.fspath(path)
    if not os.path.exists(label):
        raise InputError(f"{label}: file not found")
    if os.path.isdir(label):
        raise InputError(f"{label}: is a directory, expected an HDF5 (H5MD) file")
    try:
        is_hdf5 = h5py.is_hdf5(label)
    except OSError as error:
        raise InputError(f"{label}: cannot be read ({error})") from None
    if not is_hdf5:
        raise InputError(f"{label}: not an HDF5 file, expected an H5MD packing (.h5)")
    try:
        handle = h5py.File(label, "r")
    except OSError as error:
        raise InputError(f"{label}: cannot be opened as HDF5 ({' '.join(str(error).split())})") \
            from None
    with handle:
        _check_links(handle, label)
        try:
            yield handle, label
        except InputError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OSError,
                RuntimeError, UnicodeDecodeError) as error:
            message = " ".join(str(error).split()) or type(error).__name__
            raise InputError(f"{label}: cannot be read ({type(error).__name__}: {message[:200]}); "
                             "the file is damaged or not laid out as H5MD expects") from None


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike, on_disk: int = 0) -> Iterator[h5py.File]:
    """Build an HDF5 file in memory, then write its bytes atomically
    (:func:`systems._atomic.atomic_path`).

    HDF5 handles a failing disk badly: with the disk full it reports the failed flush once per
    open object, from destructors, and then crashes the process (seen: exit 139). Built in
    memory (the ``core`` driver without a backing store), the file is written to disk by one
    plain write, whose failure is one OSError, reported as a StorageError.

    ``on_disk`` bytes (a Jacobian written as it is computed, too large to build in memory):
    the file is written in place, in the temporary file of :func:`atomic_path`: an empty
    HDF5 file (one plain write), then that much disk reserved behind it
    (:func:`reserve_space`: a full disk fails there, cleanly), then
    opened by HDF5, whose writes land in the reserved space (it trims the rest on closing);
    any failure removes the temporary file.
    """
    if on_disk:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as stream:
                stream.write(_empty_h5_image(path))
            reserve_space(tmp, on_disk)
            with h5py.File(tmp, "r+") as handle:
                yield handle
        return
    name = f"{os.fspath(path)}.{secrets.token_hex(8)}.in-memory"  # never touches the disk
    handle = h5py.File(name, "w", driver="core", backing_store=False)
    try:
        yield handle
        handle.flush()
        image = handle.id.get_file_image()
    finally:
        handle.close()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as stream:
            stream.write(image)


def reserve_space(path, nbytes: int) -> None:
    """Allocate ``nbytes`` on disk for the file ``path`` (extending it; an HDF5 file opened
    afterwards writes into that space and trims what it did not use when it closes), so
    that a full disk or a file-size limit fails here, as one OSError, and not inside HDF5
    (which reports a failed flush from destructors, then may crash)."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(descriptor, 0, int(nbytes))
        else:  # pragma: no cover (macOS): at least the size limit is met here
            os.truncate(descriptor, int(nbytes))
    finally:
        os.close(descriptor)


def _empty_h5_image(path) -> bytes:
    """The bytes of an empty HDF5 file (built in memory, see :func:`atomic_h5`)."""
    name = f"{os.fspath(path)}.{secrets.token_hex(8)}.in-memory"
    handle = h5py.File(name, "w", driver="core", backing_store=False)
    try:
        handle.flush()
        return handle.id.get_file_image()
    finally:
        handle.close()


def decode(value: Any) -> Any:
    """An HDF5 attribute value as plain Python (str, int, float, bool, None, ndarray, list)."""
    if isinstance(value, h5py.Empty):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SO" or value.dtype.kind == "U":
            return [decode(item) for item in value.tolist()]
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def encode(value: Any, where: str) -> Any:
    """A Python value as something h5py stores as an attribute."""
    if value is None:
        return h5py.Empty("f8")
    if isinstance(value, (bool, np.bool_)):
        return np.bool_(value)
    if isinstance(value, (int, np.integer)):
        return np.int64(value)
    if isinstance(value, (float, np.floating)):
        return np.float64(value)
    if isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        array = np.asarray(value)
        if array.dtype.kind in "US" or (
            array.dtype.kind == "O" and all(isinstance(item, str) for item in array.ravel())
        ):
            return np.array([str(item) for item in array.ravel()],
                            dtype=h5py.string_dtype()).reshape(array.shape)
        if array.dtype.kind == "f":
            return array.astype(np.float64)
        if array.dtype.kind in "iub":
            return array
        raise TypeError(f"{where}: cannot store {type(value).__name__} {value!r} in HDF5")
    if hasattr(value, "__array__"):  # jax arrays
        return encode(np.asarray(value), where)
    raise TypeError(f"{where}: cannot store {type(value).__name__} {value!r} as an HDF5 attribute")


def fixed_string(text: str) -> np.bytes_:
    """A fixed-length ASCII string, the portable HDF5 string type."""
    return np.bytes_(text.encode("ascii", "replace"))


def time_dependent_element(parent: h5py.Group, name: str, frame: np.ndarray) -> h5py.Dataset:
    """A one-frame H5MD time-dependent element ``name`` {value [1][...], step [1], time [1]};
    returns its ``value`` dataset. Step and time are 0: a relaxed state has no dynamics."""
    element = parent.create_group(name)
    value = element.create_dataset("value", data=frame[None], maxshape=(None,) + frame.shape)
    element.create_dataset("step", data=np.zeros(1, dtype=np.int64), maxshape=(None,))
    element.create_dataset("time", data=np.zeros(1, dtype=np.float64), maxshape=(None,))
    return value



def check_name(name: Any, where: str) -> str:
    name = str(name)
    if not name or "/" in name or name in (".", ".."):
        raise InputError(f"{where}: name {name!r} cannot be an HDF5 group/attribute name "
                         "(no '/', not empty)")
    return name


def write_tree(group: h5py.Group, mapping: Mapping, where: str) -> None:
    """Store a nested mapping: sub-mappings as groups, small values as attributes, large
    arrays as datasets. :func:`read_tree` reads it back."""
    for key, value in mapping.items():
        key = check_name(key, where)
        if isinstance(value, Mapping):
            write_tree(group.create_group(key, track_order=True), value, f"{where}/{key}")
            continue
        encoded = encode(value, f"{where} attribute {key}")
        if isinstance(encoded, np.ndarray) and encoded.size > MAX_ATTRIBUTE_ELEMENTS:
            group.create_dataset(key, data=encoded)
        else:
            group.attrs[key] = encoded


def read_tree(group: h5py.Group, skip: tuple[str, ...] = ()) -> dict:
    tree: dict = {key: decode(value) for key, value in group.attrs.items() if key not in skip}
    for key, item in group.items():
        if key in skip:
            continue
        if isinstance(item, h5py.Group):
            tree[key] = read_tree(item)
        else:
            tree[key] = decode(item[()])
    return tree



def jacobian_unit(kind: Any, multiplier: bool = False) -> tuple[str, str]:
    """(H5MD unit string, the unit of θ) of ``dx*/dθ``: length per unit of θ (``multiplier``:
    θ is a dimensionless multiplier, as for ``epsilon`` over a non-uniform ε matrix)."""
    theta_unit = "1" if multiplier else THETA_UNITS.get(str(kind))
    if theta_unit is None:
        return "", "unknown"
    if theta_unit == LENGTH_UNIT:
        return "1", theta_unit  # length / length
    if theta_unit == "1":
        return LENGTH_UNIT, theta_unit
    return f"{LENGTH_UNIT} {theta_unit}-1", theta_unit



#: The result file's group of dO/dθ for a vector θ (:mod:`systems.reverse`).
OBSERVABLE_DERIVATIVES = "observable_derivatives"

ELASTICITY_DATASETS = {"stress": 2, "elastic_tensor": 4, "nonaffine": 3, "per_particle_stress": 3}


def require(handle: h5py.File, label: str, name: str, kind: type, expected: str):
    item = handle.get(name)
    if item is None:
        raise InputError(f"{label}: {name} is missing, expected {expected}")
    if not isinstance(item, kind):
        raise InputError(f"{label}: {name} is not a {kind.__name__.lower()}, expected {expected}")
    return item

