"""H5MD 1.1 files: packings in, sensitivity results out (the public face of the file format).

The format has one owner per concern, re-exported here: :mod:`systems._packing_file` reads and
validates packings and writes them, :mod:`systems._result_write` writes results (the streamed
Jacobian blocks through :mod:`systems.jacobian_file`), :mod:`systems._result_read` reads them
back without jax, :mod:`systems._h5` holds the shared HDF5 pieces and the format's constants.

Input (:func:`read_packing`) follows the H5MD 1.1 layout (https://www.nongnu.org/h5md/), so
files written by other molecular-dynamics tools load::

    /h5md                                   (optional when reading; always written)
    /particles/<group>/
        position    time-dependent element {value [T][N][d], step, (time)} or fixed [N][d]
        box         attrs dimension (2 or 3), boundary (["periodic"]*d or ["none"]*d)
            edges   fixed [d] edge lengths or [d][d] cell (rows = cell vectors, H5MD's
                    convention; read as the cell matrix H whose columns they are), or a
                    time-dependent element of either
        (species)   [N] int, default all 0          (fixed or time-dependent)
        (diameter)  [N] float, default 1.0 for one species, required for several
                                                 (fixed or time-dependent)
    (/parameters/potential)  attrs: kind, and the potential's parameters

Every missing or malformed item raises :class:`~systems.InputError` with a one-line message
that names the file, the dataset path and what was expected.

Output (:func:`write_packing`, :func:`write_result`) is always float64, carries the
mandatory ``/h5md`` metadata (version [1, 1], author, creator) and is written atomically:
to a temporary name in the destination folder, then renamed over the destination.

Written files use the time-dependent form for ``position`` and ``box/edges`` (one frame,
step 0), which MDAnalysis' H5MD reader requires; ``write_packing(time_dependent=False)``
writes fixed datasets. Units are reduced (:data:`UNITS_NOTE`): ``unit`` = "sigma" on the box
edges, the diameters and the position element (not on ``position/value``, where MDAnalysis
refuses any unit it does not know), "epsilon" on energies.

Result files add (groups of our own, which H5MD allows)::

    /observables/potential_energy   time-dependent element, unit epsilon (for MD tools)
    /sensitivity                 attrs: format, timings (time_*_s), zero-mode figures
        rattlers     [N] bool
        <name>/                  one group per parameter θ; attrs: theta, solver, ...
                                 (:class:`SolveReport`: written and read as that one type)
            dx_dtheta            [N][d] (scalar θ) or [P][N][d] (θ with P components);
                                 attrs: axes, unit, theta_*, gauge, rattlers, the solve's
                                 converged / residual / iterations
                                 (:func:`systems._result_write._describe_jacobian`)
            (nonaffine)          [N][d], θ of kind strain: the non-affine part of dx_dtheta
    (/elasticity)                sensitivity.elasticity: stress [d][d], elastic_tensor
                                 [d][d][d][d], nonaffine [m][N][d], per_particle_stress
                                 [N][d][d]; attrs pressure,
                                 bulk_modulus, shear_modulus, definitions, solve report
    (/observable_derivatives/<name>/)  dO/dθ of a vector θ (:mod:`systems.reverse`):
                                 d_observable_d_theta [K][P], value [K] (the observables
                                 at x*), attrs observables (their names) and the report
                                 (mode, reason, solves, residual: :class:`ObservableReport`)
    /relaxation                  attrs: steps, energy, max_force, stop_reason, converged, ...
                                 (:class:`RelaxReport`: written and read as that one type)
    (/audit)                     the finite-difference audit, if run
    /parameters/
        config                   attr json: the resolved configuration (attr text: as given)
        provenance               attrs: package versions, input sha256, device, x64, ...
        (potential)              attrs: kind and parameters, as in input files
"""

from __future__ import annotations

from ._h5 import (
    ENERGY_UNIT,
    H5MD_VERSION,
    LENGTH_UNIT,
    RESULT_FORMAT,
    RESULT_FORMAT_VERSION,
    THETA_UNITS,
    UNITS_NOTE,
)
from ._packing_file import read_packing, write_packing
from ._reports import ObservableReport, RelaxReport, SolveReport
from ._result_read import (
    Response,
    Result,
    copy_result,
    read_result,
    response_magnitudes,
)
from ._result_write import write_result
from .tasks import file_sha256

__all__ = [
    "ENERGY_UNIT",
    "H5MD_VERSION",
    "LENGTH_UNIT",
    "RESULT_FORMAT",
    "RESULT_FORMAT_VERSION",
    "THETA_UNITS",
    "UNITS_NOTE",
    "ObservableReport",
    "RelaxReport",
    "Response",
    "Result",
    "SolveReport",
    "copy_result",
    "file_sha256",
    "read_packing",
    "read_result",
    "response_magnitudes",
    "write_packing",
    "write_result",
]
