"""Energy minimization of packings: FIRE and gradient descent as compiled loops.

jax-md's ``fire_descent`` has no stopping rule and no step counter, and its force norm adds
``1e-6`` under the square root (which under-weights FIRE's mixing term once ``|F| < 1e-3``).
This module runs the same algorithm with jax-md's parameter names and defaults (Bitzek et
al., "Structural relaxation made simple", PRL 97, 170201, 2006; velocity Verlet with unit
masses, mixing ``v ← (1-α) v + α |v| F/|F|``, ``dt`` and ``α`` adapted after ``n_min``
downhill steps) with an exact norm, inside ``jax.lax.while_loop`` chunks that stop when

- the largest per-particle force ``max_i |F_i| ≤ ftol`` (``stop_reason="ftol"``), or
- ``etol > 0`` and the relative energy change of one step
  ``|E_k - E_{k-1}| ≤ etol (|E_k| + |E_{k-1}|)/2`` (``"etol"``), or
- ``max_steps`` steps were taken (``"max_steps"``, not converged), or
- a force became NaN/inf (``"nonfinite"``, not converged).

Between chunks (``minimizer.report_every`` steps) control returns to Python: the
neighbor-list overflow flag is checked (the chunk is re-run from its start with a larger
list) and ``progress("relax", step=..., max_force=..., energy=...)`` is called. Memory does
not grow with the number of steps. The chunk is compiled ahead of time
(``jit(...).lower(...).compile()``), so the measured run time excludes compilation.

Compiled functions are shared by the whole process: the per-packing data (species through
the :class:`PairModel` pytree, positions, parameters, the pair list) are arguments, so
the tasks of a sweep with one number of particles, box, potential and minimizer compile
once (:func:`compile_cache_info`, :func:`clear_compile_cache`). Neighbor lists keep one
pytree structure across packings (the previous packing's list, rebuilt at the new
positions, serves as long as it does not overflow) and their pairs are kept in (i, j)
order, so a packing relaxed after others gives bit for bit what it gives alone.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
import time
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _compile, settings
from ._compile import device_array
from ._errors import ConvergenceError, InputError
from ._system import wrap_positions
from .neighbor_lists import clear as neighbor_lists_clear
from .neighbor_lists import neighbor_lists, overflowed, rebuild, sort_pairs, update_sorted
from .pair_forces import energy_and_forces
from .potentials import PairModel, Pairs, PotentialParams

__all__ = [
    "MINIMIZER_DEFAULTS",
    "MinimizerSpec",
    "RelaxResult",
    "Relaxer",
    "clear_compile_cache",
    "compile_cache_info",
    "make_relaxer",
    "resolve_minimizer",
]

#: The minimizer's defaults (defined with their checks in :data:`systems.settings.MINIMIZER`).
MINIMIZER_DEFAULTS: dict[str, Any] = settings.defaults(settings.MINIMIZER)

_RUNNING, _FTOL, _ETOL, _MAX_STEPS, _NONFINITE, _OVERFLOW = range(6)
_STOP_NAMES = {_FTOL: "ftol", _ETOL: "etol", _MAX_STEPS: "max_steps", _NONFINITE: "nonfinite"}


@dataclasses.dataclass(frozen=True)
class MinimizerSpec:
    """Validated minimizer settings (see :data:`MINIMIZER_DEFAULTS`)."""

    kind: str = MINIMIZER_DEFAULTS["kind"]
    ftol: float = MINIMIZER_DEFAULTS["ftol"]
    etol: float = MINIMIZER_DEFAULTS["etol"]
    max_steps: int = MINIMIZER_DEFAULTS["max_steps"]
    dt_start: float = MINIMIZER_DEFAULTS["dt_start"]
    dt_max: float = MINIMIZER_DEFAULTS["dt_max"]
    n_min: int = MINIMIZER_DEFAULTS["n_min"]
    f_inc: float = MINIMIZER_DEFAULTS["f_inc"]
    f_dec: float = MINIMIZER_DEFAULTS["f_dec"]
    alpha_start: float = MINIMIZER_DEFAULTS["alpha_start"]
    f_alpha: float = MINIMIZER_DEFAULTS["f_alpha"]
    step_size: float = MINIMIZER_DEFAULTS["step_size"]
    report_every: int = MINIMIZER_DEFAULTS["report_every"]


def resolve_minimizer(config: Mapping[str, Any] | None, where: str = "config") -> MinimizerSpec:
    """Defaults updated by ``config`` (``None`` values ignored), checked by the rules of
    :data:`systems.settings.MINIMIZER` (the first mistake raises :class:`InputError`)."""
    return MinimizerSpec(**settings.resolve_section(settings.MINIMIZER, config, "minimizer",
                                                    settings.minimizer_errors, where))


@dataclasses.dataclass
class RelaxResult:
    """The outcome of one minimization.

    Attributes:
      positions: ``(N, d)`` float64 relaxed real positions (wrapped into the box).
      steps: number of steps taken.
      energy: final energy.
      max_force: final largest per-particle force magnitude ``max_i |F_i|`` (real units).
      stop_reason: ``"ftol"``, ``"etol"``, ``"max_steps"`` or ``"nonfinite"``.
      converged: ``stop_reason`` is ``"ftol"`` or ``"etol"``.
      minimizer: ``"fire"`` or ``"gradient_descent"``; ftol, etol, max_steps as used.
      time_s: wall-clock time of the loop, compilation excluded.
      time_compile_s: compilation time of this run: 0 when every function came from the
        process-wide cache (another packing with the same shapes and settings compiled it).
      neighbor_list: whether a neighbor list was used; reallocations: how often this
        packing's list overflowed and was allocated again.
    """

    positions: np.ndarray
    steps: int
    energy: float
    max_force: float
    stop_reason: str
    converged: bool
    minimizer: str = "fire"
    ftol: float = 0.0
    etol: float = 0.0
    max_steps: int = 0
    time_s: float = 0.0
    time_compile_s: float = 0.0
    neighbor_list: bool = False
    reallocations: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The scalar fields (for ``/relaxation`` attributes and summaries)."""
        out = dataclasses.asdict(self)
        out.pop("positions")
        return out

    def message(self) -> str:
        """One line: what happened, measured against the limit, and what to try."""
        name = "FIRE" if self.minimizer == "fire" else "gradient descent"
        if self.converged:
            return (f"{name} converged in {self.steps} steps (max |force| "
                    f"{self.max_force:.1e}, stopped by {self.stop_reason})")
        if self.stop_reason == "nonfinite":
            return (f"{name} produced a non-finite force after {self.steps} steps; check for "
                    "overlapping particles or lower minimizer.dt_max / minimizer.step_size")
        return (f"{name} did not converge in {self.steps} steps (max |force| "
                f"{self.max_force:.1e} > ftol {self.ftol:.0e}); raise minimizer.max_steps or "
                "loosen minimizer.ftol")


class _FireState(NamedTuple):
    position: jax.Array
    velocity: jax.Array
    force: jax.Array
    dt: jax.Array
    alpha: jax.Array
    n_pos: jax.Array


class _Carry(NamedTuple):
    state: _FireState
    neighbors: Any
    step: jax.Array
    energy: jax.Array
    max_force: jax.Array
    code: jax.Array


# ---------------------------------------------------------------------------------------
# The compiled pieces, shared by every Relaxer of one process.
#
# The traced functions are module-level and take the per-packing data as arguments: the
# PairModel pytree (its one leaf is ``species``; potential, box and dimension are static and
# compared by value), positions, parameters and the pair list. What does not change between
# packings of one sweep (the minimizer settings the loop reads) is the static first
# argument. A compiled executable is cached under (name, settings, argument tree structure,
# leaf shapes/dtypes): a second packing with the same N, d, potential, box, minimizer,
# neighbor cutoff/skin (and list capacity, see
# :class:`~systems.neighbor_lists.NeighborLists`) compiles nothing.


@dataclasses.dataclass(frozen=True)
class _LoopSettings:
    """The minimizer settings the compiled loop reads (hashable; the static argument)."""

    kind: str
    etol: float
    dt_start: float
    dt_max: float
    n_min: int
    f_inc: float
    f_dec: float
    alpha_start: float
    f_alpha: float
    step_size: float
    use_nl: bool
    skin: float | None = None  # the neighbor list's (:func:`update_sorted`)

    @classmethod
    def of(cls, spec: MinimizerSpec, use_nl: bool, skin: float | None = None) -> _LoopSettings:
        return cls(spec.kind, spec.etol, spec.dt_start, spec.dt_max, spec.n_min, spec.f_inc,
                   spec.f_dec, spec.alpha_start, spec.f_alpha, spec.step_size, bool(use_nl),
                   None if skin is None else float(skin))


def _pairs(s: _LoopSettings, neighbors):
    if s.use_nl:
        return Pairs.from_sparse_neighbor_list(neighbors)
    return neighbors


def _energy_and_force(s: _LoopSettings, model: PairModel, y, params, neighbors,
                      with_energy: bool):
    """``(E or NaN, -∇E)`` from the pair law's derivative (:mod:`systems.pair_forces`: the
    same values as ``-jax.grad(model.energy)`` to round-off, in fewer operations)."""
    return energy_and_forces(model, y, params, _pairs(s, neighbors), None, with_energy)



def _step(s: _LoopSettings, model: PairModel, state: _FireState, neighbors, params):
    """One minimizer step; returns the new state, neighbors and the new energy."""
    shift = model.shift
    with_energy = s.etol > 0
    if s.kind == "gradient_descent":
        y = shift(state.position, s.step_size * state.force)
        if s.use_nl:
            neighbors = update_sorted(model, neighbors, y, s.skin)
        e, f = _energy_and_force(s, model, y, params, neighbors, with_energy)
        return state._replace(position=y, force=f), neighbors, e
    dt = state.dt
    v_half = state.velocity + 0.5 * dt * state.force
    y = shift(state.position, dt * v_half)
    if s.use_nl:
        neighbors = update_sorted(model, neighbors, y, s.skin)
    e, f = _energy_and_force(s, model, y, params, neighbors, with_energy)
    v = v_half + 0.5 * dt * f
    # |F|², |v|² and F·v in one reduction (one loop over the particles, not three)
    f2, v2, power = jnp.sum(jnp.stack([f * f, v * v, f * v]), axis=(1, 2))
    f_norm = jnp.sqrt(f2)
    v = v + state.alpha * (f * (jnp.sqrt(v2) / jnp.where(f_norm > 0, f_norm, 1.0)) - v)
    n_pos, dt, alpha = fire_schedule(s, state, dt, power)
    v = jnp.where(power >= 0, v, 0.0)
    return _FireState(y, v, f, dt, alpha, n_pos), neighbors, e


def fire_schedule(s: _LoopSettings, state: _FireState, dt, power):
    """FIRE's bookkeeping after a step whose power is ``F·v``: ``(n_pos, dt, alpha)`` (the
    step grows after ``n_min`` downhill steps and shrinks, with the mixing reset, uphill)."""
    n_pos = jnp.where(power >= 0, state.n_pos + 1, 0)
    grow = (power > 0) & (n_pos > s.n_min)
    dt = jnp.where(grow, jnp.minimum(dt * s.f_inc, s.dt_max), dt)
    dt = jnp.where(power < 0, dt * s.f_dec, dt)
    alpha = jnp.where(grow, state.alpha * s.f_alpha, state.alpha)
    alpha = jnp.where(power < 0, s.alpha_start, alpha)
    return n_pos, dt, alpha


def _max_force(force, params):
    # sqrt is monotonic and correctly rounded: the max of the squares, then one sqrt
    return jnp.sqrt(jnp.max(jnp.sum(force * force, axis=-1))) / params.scale


def _chunk(s: _LoopSettings, model: PairModel, carry: _Carry, params, end_step, ftol):
    """Steps until a stopping rule fires or ``end_step``; returns the carry and energy."""

    def cond(c: _Carry):
        return (c.code == _RUNNING) & (c.step < end_step)

    def body(c: _Carry):
        state, neighbors, e = _step(s, model, c.state, c.neighbors, params)
        fmax = _max_force(state.force, params)
        code = jnp.where(fmax <= ftol, _FTOL, _RUNNING)
        if s.etol > 0:
            change = jnp.abs(e - c.energy)
            small = change <= s.etol * 0.5 * (jnp.abs(e) + jnp.abs(c.energy))
            code = jnp.where((code == _RUNNING) & small, _ETOL, code)
        code = jnp.where(jnp.isfinite(fmax), code, _NONFINITE)
        if s.use_nl:
            code = jnp.where(neighbors.did_buffer_overflow, _OVERFLOW, code)
        return _Carry(state, neighbors, c.step + 1, jnp.asarray(e, c.energy.dtype), fmax,
                      code.astype(jnp.int32))

    out = jax.lax.while_loop(cond, body, carry)
    e_final = model.energy(out.state.position, params, _pairs(s, out.neighbors))
    return out, e_final



def _init(s: _LoopSettings, model: PairModel, y, params, neighbors, half_box):
    """The loop's first carry; with a neighbor list, ``neighbors`` is rebuilt at ``y``."""
    if s.use_nl:
        neighbors = rebuild(model, neighbors, y, half_box)
    e, f = _energy_and_force(s, model, y, params, neighbors, True)
    state = _FireState(y, jnp.zeros_like(y), f, jnp.asarray(s.dt_start),
                       jnp.asarray(s.alpha_start), jnp.asarray(0, jnp.int32))
    fmax = _max_force(f, params)
    return _Carry(state, neighbors, jnp.asarray(0, jnp.int64), e, fmax,
                  jnp.asarray(_RUNNING, jnp.int32)), e


@functools.lru_cache(maxsize=16)
def _all_pairs(n: int) -> Pairs:
    return Pairs.all_pairs(n)


def clear_compile_cache() -> None:
    """Forget every compiled relaxation function and neighbor-list template (and counts)."""
    _compile.clear("relax")
    neighbor_lists_clear()
    _all_pairs.cache_clear()


def compile_cache_info() -> dict[str, Any]:
    """``{"entries", "compiles", "hits", "compile_s"}`` since the last clear."""
    return _compile.cache_info("relax")


_MAX_REALLOCATIONS = 20
#: The neighbor-list skin as a fraction of the cutoff (its default; the list reaches
#: ``cutoff × (1 + SKIN)``).
SKIN = 0.25


def _check_reallocations(count: int) -> None:
    """Give up on a neighbor list that keeps overflowing."""
    if count > _MAX_REALLOCATIONS:
        raise ConvergenceError(
            f"the neighbor list kept overflowing after {_MAX_REALLOCATIONS} reallocations; "
            "raise potential.capacity_multiplier or set potential.neighbor_list: false")


class Relaxer:
    """A minimizer for one :class:`PairModel`, reusable across parameter values.

    The compiled loop is shared by every Relaxer of the process (see
    :func:`compile_cache_info`): relaxing another packing with the same number of
    particles, dimension, potential settings, box, minimizer settings and neighbor
    cutoff/skin compiles nothing (species, diameters and positions are arguments).

    Args:
      model: the pair model.
      minimizer: settings.
      cutoff: neighbor cutoff in reference-box units; must cover every parameter set that
        :meth:`run` will see (see :meth:`PairModel.reference_cutoff`).
      neighbor_list: use a jax-md cell-list neighbor list (else every pair, O(N²)).
      skin: neighbor-list skin (rebuild after a particle moves skin/2); default
        :data:`SKIN` × cutoff.
    """

    def __init__(self, model: PairModel, minimizer: MinimizerSpec, *, cutoff: float,
                 neighbor_list: bool, skin: float | None = None):
        self.model = model
        self.spec = minimizer
        self.cutoff = float(cutoff)
        self.use_nl = bool(neighbor_list)
        self.skin = SKIN * self.cutoff if skin is None else float(skin)
        self._settings = _LoopSettings.of(minimizer, self.use_nl,
                                          self.skin if self.use_nl else None)
        self._lists = (neighbor_lists(model, self.cutoff, self.skin) if self.use_nl
                       else None)
        self._all_pairs = None if self.use_nl else _all_pairs(model.n)
        self._run_compile_s = 0.0
        #: seconds this Relaxer spent compiling (0 for what another one compiled already)
        self.time_compile_s = 0.0

    # -- the traced pieces with this Relaxer's settings (used by benchmarks) ---------------
    def _energy_and_force(self, y, params, neighbors, with_energy: bool):
        return _energy_and_force(self._settings, self.model, y, params, neighbors, with_energy)

    def _step(self, state: _FireState, neighbors, params):
        """One minimizer step; returns the new state, neighbors and the new energy."""
        return _step(self._settings, self.model, state, neighbors, params)

    def _compiled_fn(self, fn: Callable, *args):
        compiled, seconds = _compile.compiled("relax", fn, self._settings, *args)
        self._run_compile_s += seconds
        self.time_compile_s += seconds
        return compiled

    def _chunk_ahead(self, init_args: tuple, ftol_arg) -> None:
        """On a first compilation of ``_init``, compile ``_chunk`` meanwhile in a thread.

        XLA compiles without Python's lock, so on two cores the two compilations overlap
        (a first run compiles ``_init`` for about 0.5 s and ``_chunk`` for about 1 s). The
        chunk's carry is ``_init``'s output as :func:`systems._compile.abstract_outputs`
        gives it, so the key is the one the main thread asks for next (it then waits for
        this compilation or finds it done). Only a head start: on any failure, or another
        key, the main thread compiles as before.
        """
        if not _compile.first_compilation(_init, self._settings, *init_args):
            return
        settings, model, params = self._settings, init_args[0], init_args[2]

        def compile_chunk():
            try:
                carry, _ = _compile.abstract_outputs(_init, settings, *init_args)
                _compile.compiled("relax", _chunk, settings, model, carry, params,
                                  jax.ShapeDtypeStruct((), np.int64), ftol_arg)
            except Exception:  # noqa: BLE001  (the main thread compiles it then)
                pass

        threading.Thread(target=compile_chunk, name="compile-ahead", daemon=True).start()

    def _allocate(self, y, extra_per_particle: int = 0):
        return self._lists.allocate(y, int(extra_per_particle))

    def run(self, positions, params: PotentialParams,
            progress: Callable[..., None] | None = None, *,
            max_steps: int | None = None, ftol: float | None = None) -> RelaxResult:
        """Minimize from ``positions`` (reference-box coordinates) at ``params``.

        ``max_steps`` and ``ftol`` override the minimizer settings for this run (the
        compiled loop is the same).
        """
        s = self.spec
        model = self.model
        max_steps = s.max_steps if max_steps is None else int(max_steps)
        ftol = s.ftol if ftol is None else float(ftol)
        ftol_arg = device_array(ftol, np.float64)
        self._run_compile_s = 0.0
        y = device_array(positions, np.float64)
        params = jax.tree.map(lambda a: device_array(a, np.float64), params)
        reallocations = 0
        if self.use_nl:
            # The template list (another packing's, same N) rebuilt at y inside init: no
            # new shapes unless it overflows here.
            # Too small a template is not this packing's overflow: allocate, do not count.
            half_box = self._lists.half_box
            neighbors = self._lists.template(y)
            counted = neighbors is None
            if neighbors is None:
                neighbors = self._allocate(y)
            self._chunk_ahead((model, y, params, neighbors, half_box), ftol_arg)
            init = self._compiled_fn(_init, model, y, params, neighbors, half_box)
            carry, _ = init(model, y, params, neighbors, half_box)
            while overflowed(carry.neighbors):
                if counted:
                    reallocations += 1
                counted = True
                _check_reallocations(reallocations)
                neighbors = self._allocate(y)
                init = self._compiled_fn(_init, model, y, params, neighbors, half_box)
                carry, _ = init(model, y, params, neighbors, half_box)
        else:
            self._chunk_ahead((model, y, params, self._all_pairs, None), ftol_arg)
            init = self._compiled_fn(_init, model, y, params, self._all_pairs, None)
            carry, _ = init(model, y, params, self._all_pairs, None)
        t_run = 0.0
        chunk_fn = self._compiled_fn(_chunk, model, carry, params,
                                     device_array(0, np.int64), ftol_arg)
        t0 = time.perf_counter()
        if float(carry.max_force) <= ftol:
            carry = carry._replace(code=device_array(_FTOL, np.int32))
        energy = float(carry.energy)
        while int(carry.code) == _RUNNING and int(carry.step) < max_steps:
            end = min(int(carry.step) + s.report_every, max_steps)
            new, e_final = chunk_fn(model, carry, params, device_array(end, np.int64),
                                    ftol_arg)
            if int(new.code) == _OVERFLOW:
                # The list overflowed somewhere in this chunk: reallocate where it happened
                # (with head room) and redo the chunk from its start.
                t_run += time.perf_counter() - t0
                reallocations += 1
                _check_reallocations(reallocations)
                old = int(carry.neighbors.idx.shape[-1])
                grown = self._allocate(new.state.position, math.ceil(0.25 * old / model.n))
                grown = sort_pairs(grown.update(model.list_positions(carry.state.position)))
                carry = carry._replace(neighbors=grown)
                chunk_fn = self._compiled_fn(_chunk, model, carry, params,
                                             device_array(0, np.int64), ftol_arg)
                t0 = time.perf_counter()
                continue
            carry = new
            energy = float(e_final)
            if progress is not None:
                progress("relax", step=int(carry.step), max_force=float(carry.max_force),
                         energy=energy)
        code = int(carry.code)
        t_run += time.perf_counter() - t0
        if code == _RUNNING:
            code = _MAX_STEPS
        x = np.asarray(carry.state.position) * float(params.scale)
        if model.periodic:
            x = wrap_positions(x, np.asarray(model.box) * float(params.scale))
        return RelaxResult(
            positions=x,
            steps=int(carry.step),
            energy=energy,
            max_force=float(carry.max_force),
            stop_reason=_STOP_NAMES[code],
            converged=code in (_FTOL, _ETOL),
            minimizer=s.kind,
            ftol=ftol,
            etol=s.etol,
            max_steps=max_steps,
            time_s=t_run,
            time_compile_s=self._run_compile_s,
            neighbor_list=self.use_nl,
            reallocations=reallocations,
        )


def make_relaxer(model: PairModel, minimizer: MinimizerSpec,
                 params_seen: list[PotentialParams], skin: float | None = None, *,
                 where: str = "the periodic box") -> Relaxer:
    """A :class:`Relaxer` whose neighbor cutoff covers every parameter set in ``params_seen``.

    A box or sheared cell thinner than twice that cutoff is refused (``InputError`` naming
    ``where``): a particle would meet two images of a neighbour, and the minimum image
    counts one (a sheared cell's fractional rounding could also miss the nearest).
    """
    cutoff = model.reference_cutoff(params_seen)
    if model.periodic:
        from ._system import thin_cell_problem

        problem = thin_cell_problem(model.box, cutoff)
        if problem:
            raise InputError(f"{where} {problem}")
    return Relaxer(model, minimizer, cutoff=cutoff,
                   neighbor_list=model.use_neighbor_list(cutoff * (1.0 + SKIN)), skin=skin)

