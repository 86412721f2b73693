"""Pair potentials for particle packings, built from jax-md's pair laws.

The energy of a packing is a sum over interacting pairs,

.. math::
    E(y, \\theta) = \\sum_{i<j} w_{ij}\\, V\\big(\\lambda\\,|y_i - y_j|_{\\rm box};
                    \\sigma_{ij}, \\epsilon_{s_i s_j}\\big),

where ``y`` are the positions in the *reference* box, ``λ`` (:attr:`PotentialParams.scale`)
scales the box edges at fixed fractional positions (the real positions are ``x = λ y``),
``σ_ij = (d_i + d_j) / 2`` is the contact distance of the two diameters (or an explicit
``sigma`` for Lennard-Jones / Morse) and ``ε`` is a per-species-pair energy scale. The pair
laws are jax-md's:

- ``soft_sphere``: ``ε/α (1 - r/σ)^α`` for ``r < σ`` (O'Hern et al., PRE 68, 011306, 2003);
  α = 2 harmonic, α = 5/2 Hertzian.
- ``lennard_jones``: ``4ε((σ/r)^12 - (σ/r)^6)``, smoothly truncated between ``r_onset σ``
  and ``r_cutoff σ`` (jax-md's ``multiplicative_isotropic_cutoff``).
- ``morse``: ``ε(1 - exp(-a(r - σ)))^2 - ε`` truncated the same way.

Everything that changes with θ lives in :class:`PotentialParams` (an explicit pytree of
float64 arrays: diameters, the ε matrix and the box scale); everything else is static in
:class:`PairModel`. jax-md is imported inside functions only (``import jax_md`` takes
seconds, and jax-md must see x64 enabled first: :func:`systems._jaxmd.require_x64`
checks it). The pair laws' formulas are in :mod:`systems.pair_laws`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import settings
from ._compile import device_array
from ._jaxmd import box_key, make_space, periodic_difference, wrap_mod
from ._errors import InputError
from ._system import pairs_within, perpendicular_widths
from .pair_laws import lennard_jones, morse, smooth_cutoff, soft_sphere

__all__ = [
    "POTENTIAL_DEFAULTS",
    "POTENTIAL_KINDS",
    "PotentialSpec",
    "PotentialParams",
    "Pairs",
    "PairModel",
    "PairTerms",
    "resolve_potential",
    "deformation",
    "real_positions",
]

POTENTIAL_KINDS = settings.POTENTIALS
#: The potential's defaults (defined with their checks in :data:`systems.settings.POTENTIAL`).
POTENTIAL_DEFAULTS: dict[str, Any] = settings.defaults(settings.POTENTIAL)

#: Neighbor lists are used ("auto") from this many particles on, where the box allows cells
#: (at N = 256 they make FIRE about ten times faster than every pair).
NEIGHBOR_LIST_MIN_PARTICLES = 128
#: Interacting pairs: within this multiple of the interaction range (a little head room
#: over the range, for pairs at the edge of contact).
INTERACTING_MARGIN = 1.02


def _species_matrix(value: Any, n_species: int, name: str, where: str) -> np.ndarray:
    """A scalar or an ``[S][S]`` nested list as a symmetric float64 ``(S, S)`` matrix."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full((n_species, n_species), float(arr))
    if arr.shape != (n_species, n_species):
        raise InputError(
            f"{where}: potential.{name} must be a number or a {n_species}x{n_species} "
            f"per-species-pair matrix, got shape {list(arr.shape)}"
        )
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{where}: potential.{name} must be finite, got {arr.tolist()}")
    if not np.allclose(arr, arr.T):
        raise InputError(
            f"{where}: potential.{name} must be symmetric (pair (a, b) is pair (b, a)), "
            f"got {arr.tolist()}"
        )
    return arr


@dataclasses.dataclass(frozen=True)
class PotentialSpec:
    """The static description of a pair potential (everything not differentiated).

    Attributes:
      kind: ``"soft_sphere"``, ``"lennard_jones"`` or ``"morse"``.
      epsilon: ``(S, S)`` float64 energy scales (the default value of the θ of kind epsilon).
      alpha: ``(S, S)`` soft-sphere exponents.
      sigma: ``(S, S)`` explicit Lennard-Jones / Morse lengths, or ``None`` to use the pair
        diameters ``σ_ij = (d_i + d_j) / 2``.
      r_onset, r_cutoff: smooth truncation of Lennard-Jones / Morse, in units of σ_ij.
      morse_alpha: ``(S, S)`` Morse range parameters.
      neighbor_list: ``"auto"``, ``True`` or ``False``.
      capacity_multiplier: jax-md neighbor-list capacity head room.
    """

    kind: str
    epsilon: np.ndarray
    alpha: np.ndarray
    sigma: np.ndarray | None
    r_onset: float
    r_cutoff: float
    morse_alpha: np.ndarray
    neighbor_list: Any = POTENTIAL_DEFAULTS["neighbor_list"]
    capacity_multiplier: float = POTENTIAL_DEFAULTS["capacity_multiplier"]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (matrices as nested lists, scalars where uniform)."""

        def plain(a):
            if a is None:
                return None
            a = np.asarray(a)
            return float(a.flat[0]) if np.all(a == a.flat[0]) else a.tolist()

        return {
            "kind": self.kind,
            "epsilon": plain(self.epsilon),
            "alpha": plain(self.alpha),
            "sigma": plain(self.sigma),
            "r_onset": self.r_onset,
            "r_cutoff": self.r_cutoff,
            "morse_alpha": plain(self.morse_alpha),
            "neighbor_list": self.neighbor_list,
            "capacity_multiplier": self.capacity_multiplier,
        }


def resolve_potential(
    config: Mapping[str, Any] | None,
    n_species: int,
    file_potential: Mapping[str, Any] | None = None,
    where: str = "config",
) -> PotentialSpec:
    """Merge defaults < the input file's ``/parameters/potential`` < the config.

    A config value of ``None`` (or a missing key) leaves the file's value (or the default);
    any other config value overrides the file.

    Raises:
      InputError: unknown kind or malformed values (one line naming the key).
    """
    given: dict[str, Any] = {}
    for key, value in (file_potential or {}).items():
        if key in settings.POTENTIAL and value is not None:  # a file's other keys are its own
            given[key] = value.tolist() if hasattr(value, "tolist") else value
    for key, value in (config or {}).items():
        if value is not None:
            given[key] = value.tolist() if hasattr(value, "tolist") else value
    merged, errors = settings.check_section(settings.POTENTIAL, given, "potential")
    errors = errors or settings.potential_errors(merged)
    if errors:
        raise InputError(f"{where}: {errors[0]}")
    kind, nl = merged["kind"], merged["neighbor_list"]
    epsilon = _species_matrix(merged["epsilon"], n_species, "epsilon", where)
    alpha = _species_matrix(merged["alpha"], n_species, "alpha", where)
    morse_alpha = _species_matrix(merged["morse_alpha"], n_species, "morse_alpha", where)
    sigma = merged["sigma"]
    if sigma is not None:
        sigma = _species_matrix(sigma, n_species, "sigma", where)
    return PotentialSpec(
        kind=kind,
        epsilon=epsilon,
        alpha=alpha,
        sigma=sigma,
        r_onset=merged["r_onset"],
        r_cutoff=merged["r_cutoff"],
        morse_alpha=morse_alpha,
        neighbor_list=nl,
        capacity_multiplier=merged["capacity_multiplier"],
    )


class PotentialParams(NamedTuple):
    """The differentiable parameters of a packing's energy (a pytree of float64 arrays).

    Attributes:
      diameters: ``(N,)`` particle diameters.
      epsilon: ``(S, S)`` per-species-pair energy scales.
      scale: ``()`` box edge scale λ at fixed fractional positions (1 = the input box).
      strain: ``(d, d)`` small strain ε applied affinely to the box and the positions, or
        ``None`` (no strain, the default). The real positions are ``x = λ (I + ε) y``
        (:func:`real_positions`); every pair displacement is mapped the same way. A θ of kind
        ``strain`` moves one symmetric component (:mod:`systems.elasticity`).
    """

    diameters: jax.Array
    epsilon: jax.Array
    scale: jax.Array
    strain: Any = None


def deformation(params: PotentialParams, dim: int):
    """``(d, d)`` deformation gradient ``λ (I + ε)`` from reference to real coordinates."""
    eye = jnp.eye(dim, dtype=jnp.float64)
    if params.strain is None:
        return params.scale * eye
    return params.scale * (eye + params.strain)


def real_positions(params: PotentialParams, y):
    """Real positions ``x = λ (I + ε) y`` of reference positions ``y`` ``(N, d)``."""
    if params.strain is None:
        return params.scale * y
    return y @ deformation(params, y.shape[-1]).T


class Pairs(NamedTuple):
    """A list of interacting pairs ``(i[k], j[k])`` with weights (0 marks padding).

    A jax-md dense neighbor list becomes every ordered pair with weight 1/2; a half list
    (``i < j``) has weight 1. Either way ``sum_k w_k V_k`` is the pair energy.
    """

    i: jax.Array
    j: jax.Array
    weight: jax.Array

    @classmethod
    def all_pairs(cls, n: int) -> "Pairs":
        i, j = np.triu_indices(n, 1)
        return cls(device_array(i, np.int32), device_array(j, np.int32),
                   device_array(np.ones(len(i)), np.float64))

    @classmethod
    def from_sparse_neighbor_list(cls, neighbors) -> "Pairs":
        """The (i < j) pairs of a jax-md OrderedSparse neighbor list (padding index = N)."""
        n = neighbors.reference_position.shape[0]
        i = neighbors.idx[0].astype(jnp.int32)
        j = neighbors.idx[1].astype(jnp.int32)
        return cls(i, j, jnp.where((i < n) & (j < n), 1.0, 0.0))

    @classmethod
    def from_arrays(cls, i: np.ndarray, j: np.ndarray) -> "Pairs":
        # host (numpy) arrays: moving them to the device, or casting there, would compile
        # a small function once per list length; jax takes them as they are
        return cls(np.asarray(i, np.int32), np.asarray(j, np.int32), np.ones(len(i)))


class PairTerms(NamedTuple):
    """Per pair (:meth:`PairModel.pair_terms`): displacement ``dr`` (real units), distance
    ``r``, ``sigma`` σ_ij, ``epsilon`` ε_ij, species ``si``, ``sj``, indices ``i``, ``j``
    (padding clamped to N - 1) and the ``valid`` mask."""

    dr: jax.Array
    r: jax.Array
    sigma: jax.Array
    epsilon: jax.Array
    si: jax.Array
    sj: jax.Array
    i: jax.Array
    j: jax.Array
    valid: jax.Array


def _is_zero(tangent) -> bool:
    """True for a symbolic-zero tangent (or a pytree of them)."""
    leaves = jax.tree.leaves(
        tangent, is_leaf=lambda t: isinstance(t, jax.custom_derivatives.SymbolicZero))
    return all(isinstance(t, jax.custom_derivatives.SymbolicZero) for t in leaves)


def _instantiate(tangent, primal):
    """Replace symbolic zeros in a tangent pytree by zero arrays."""
    return jax.tree.map(
        lambda t, p: jnp.zeros_like(p) if isinstance(t, jax.custom_derivatives.SymbolicZero)
        else t, tangent, primal,
        is_leaf=lambda t: isinstance(t, jax.custom_derivatives.SymbolicZero))


def with_position_jvp(fun, product):
    """``fun(y, params)`` as a ``custom_jvp`` whose tangent in ``y`` is
    ``product(y, params, y_dot)`` (a Hessian-vector product the caller computes cheaply)
    and whose tangent in ``params`` is automatic differentiation of ``fun``."""
    wrapped = jax.custom_jvp(fun)

    def fun_jvp(primals, tangents):
        y, params = primals
        y_dot, params_dot = tangents
        if _is_zero(params_dot):
            out = fun(y, params)
            out_dot = jnp.zeros_like(out)
        else:
            out, out_dot = jax.jvp(lambda p: fun(y, p), (params,),
                                   (_instantiate(params_dot, params),))
        if not _is_zero(y_dot):
            out_dot = out_dot + product(y, params, y_dot)
        return out, out_dot

    wrapped.defjvp(fun_jvp, symbolic_zeros=True)
    return wrapped



@dataclasses.dataclass(frozen=True, eq=False)
class PairModel:
    """A pair-potential energy over a fixed set of particles.

    Positions ``y`` live in the reference box (edges :attr:`box`); the real positions are
    ``x = λ y`` with ``λ = params.scale``. Build it with :meth:`build`.

    A pytree: ``species`` is its one leaf, the rest (potential spec, box, boundary,
    dimension) is static data compared by value. Passed as an argument of a jitted
    function, two packings with the same potential and box but different species share
    one compiled function (:meth:`static_key`).
    """

    spec: PotentialSpec
    species: jax.Array  # (N,) int32 (a jax array: jax-md's sparse paths need one)
    box: np.ndarray | None
    periodic: bool
    dim: int
    displacement_fn: Any
    shift_fn: Any

    @classmethod
    def build(cls, system, spec: PotentialSpec) -> "PairModel":
        displacement_fn, shift_fn = make_space(system.box, system.periodic)
        return cls(
            spec=spec,
            species=device_array(system.species, np.int32),
            box=None if system.box is None else np.asarray(system.box, np.float64),
            periodic=bool(system.periodic),
            dim=int(system.positions.shape[1]),
            displacement_fn=displacement_fn,
            shift_fn=shift_fn,
        )

    @property
    def n(self) -> int:
        return int(self.species.shape[0])

    def static_key(self) -> tuple:
        """Everything compiled code depends on, but the species, as a hashable value (equal
        for equal settings).

        ``spec.epsilon`` enters only by its shape: the energy scale reaches compiled code as
        ``params.epsilon`` (a traced argument), so packings that differ only in ε (a sweep over
        ``potential.epsilon``) share every compiled function.
        """
        spec = self.spec

        def arr(a):
            return None if a is None else (np.asarray(a).shape, np.asarray(a).tobytes())

        box = None if self.box is None else box_key(self.box)
        return (spec.kind, np.shape(spec.epsilon), arr(spec.alpha), arr(spec.sigma),
                float(spec.r_onset), float(spec.r_cutoff), arr(spec.morse_alpha),
                str(spec.neighbor_list), float(spec.capacity_multiplier), box,
                self.periodic, self.dim)

    # ---- parameters -------------------------------------------------------------------
    def default_params(self, diameters: np.ndarray) -> PotentialParams:
        return PotentialParams(
            diameters=device_array(diameters, np.float64),
            epsilon=device_array(self.spec.epsilon, np.float64),
            scale=device_array(1.0, np.float64),
        )

    def interaction_range(self, params: PotentialParams) -> float:
        """Largest distance (real units) at which two particles interact under ``params``."""
        if self.spec.sigma is not None:
            sigma_max = float(np.max(self.spec.sigma))
        else:
            sigma_max = float(np.max(np.asarray(params.diameters)))
        if self.spec.kind == "soft_sphere":
            return sigma_max
        return self.spec.r_cutoff * sigma_max

    def reference_cutoff(self, params_seen: list[PotentialParams]) -> float:
        """Neighbor cutoff in reference-box units covering every parameter set listed.

        jax-md fixes the cutoff at allocation and silently drops pairs beyond it, so this
        must cover the largest σ (and smallest box scale λ) the run will ever evaluate.
        """
        return max(
            self.interaction_range(p) / float(np.asarray(p.scale)) for p in params_seen
        )

    # ---- the energy -------------------------------------------------------------------
    def _pair_sigma(self, params: PotentialParams, i, j):
        if self.spec.sigma is not None:
            return jnp.asarray(self.spec.sigma)[self.species[i], self.species[j]]
        d = params.diameters
        return 0.5 * (d[i] + d[j])

    def pair_law(self, r, sigma, epsilon, si, sj):
        """Pair energy ``V(r; σ, ε)`` elementwise (jax-md's pair laws, :func:`soft_sphere`,
        :func:`lennard_jones`, :func:`morse` with :func:`smooth_cutoff`)."""
        kind = self.spec.kind
        if kind == "soft_sphere":
            alpha = jnp.asarray(self.spec.alpha)[si, sj]
            return soft_sphere(r, sigma, epsilon, alpha)
        cutoff = smooth_cutoff(r, self.spec.r_onset * sigma, self.spec.r_cutoff * sigma)
        if kind == "lennard_jones":
            return cutoff * lennard_jones(r, sigma, epsilon)
        a = jnp.asarray(self.spec.morse_alpha)[si, sj]
        return cutoff * morse(r, sigma, epsilon, a)

    def pair_geometry(self, y, params: PotentialParams, pairs: Pairs):
        """Per pair: displacement (real units), distance, σ_ij, and the validity mask."""
        n = y.shape[0]
        valid = (pairs.weight != 0) & (pairs.i < n) & (pairs.j < n) & (pairs.i != pairs.j)
        i = jnp.minimum(pairs.i, n - 1)
        j = jnp.minimum(pairs.j, n - 1)
        if self.periodic and np.ndim(self.box) == 1:  # jax-md's, on the whole array
            dr = periodic_difference(y[i] - y[j], jnp.asarray(self.box, jnp.float64))
        else:
            dr = jax.vmap(self.displacement_fn)(y[i], y[j])
        dr = dr * params.scale
        if params.strain is not None:  # affine strain of the box and positions
            dr = dr + dr @ jnp.asarray(params.strain).T
        r2 = jnp.sum(dr * dr, axis=-1)
        valid = valid & (r2 > 0)
        r = jnp.sqrt(jnp.where(valid, r2, 1.0))
        sigma = self._pair_sigma(params, i, j)
        return dr, r, sigma, valid

    def pair_terms(self, y, params: PotentialParams, pairs: Pairs) -> PairTerms:
        """:meth:`pair_geometry` with what the pair law takes besides (ε_ij, the species)."""
        n = y.shape[0]
        dr, r, sigma, valid = self.pair_geometry(y, params, pairs)
        i = jnp.minimum(pairs.i, n - 1)
        j = jnp.minimum(pairs.j, n - 1)
        si, sj = self.species[i], self.species[j]
        return PairTerms(dr, r, sigma, params.epsilon[si, sj], si, sj, i, j, valid)

    def pair_energies(self, y, params: PotentialParams, pairs: Pairs, active=None):
        """Weighted energy of every pair (zeros for padding and inactive particles)."""
        t = self.pair_terms(y, params, pairs)
        v = self.pair_law(t.r, t.sigma, t.epsilon, t.si, t.sj)
        w = pairs.weight
        if active is not None:
            w = w * active[t.i] * active[t.j]
        return jnp.where(t.valid, w * v, 0.0)

    def energy(self, y, params: PotentialParams, pairs: Pairs, active=None):
        """Total energy ``E(y, params)``; ``active`` (N,) 0/1 switches particles off."""
        return jnp.sum(self.pair_energies(y, params, pairs, active))

    def forces(self, y, params: PotentialParams, pairs: Pairs, active=None):
        """Forces in reference-box coordinates, ``-∇_y E`` (= λ times the real force)."""
        return -jax.grad(self.energy)(y, params, pairs, active)

    def pair_stiffness(self, y, params: PotentialParams, pairs: Pairs, active=None):
        """Per pair the d×d block ``K = ∂²(w V)/∂y_i∂y_i`` (= -∂²/∂y_i∂y_j), zero for
        padding, inactive particles and non-interacting pairs.

        The Hessian is ``H v = Σ_pairs K (v_i - v_j)`` scattered with + on ``i``, - on ``j``.
        """
        t = self.pair_terms(y, params, pairs)
        w = jnp.where(t.valid, pairs.weight, 0.0)
        if active is not None:
            w = w * active[t.i] * active[t.j]
        unit = jnp.zeros_like(t.dr).at[:, 0].set(1.0)
        dr = jnp.where(t.valid[:, None], t.dr, unit)

        def block(dr, sigma, eps, si, sj, w):
            def v(dr):
                return w * self.pair_law(jnp.sqrt(jnp.sum(dr * dr)), sigma, eps, si, sj)

            return jax.hessian(v)(dr)

        blocks = jax.vmap(block)(dr, t.sigma, t.epsilon, t.si, t.sj, w)
        if params.strain is None:
            return blocks * params.scale ** 2
        f = deformation(params, dr.shape[-1])  # ∂dr/∂y: the blocks in y are Fᵀ K F
        return jnp.einsum("ba,kbc,cd->kad", f, blocks, f)

    def gradient_fn(self, pairs: Pairs, active=None, stiffness=None):
        """``g(y, params) = ∇_y E(y, params)`` whose JVP in ``y`` is a sparse Hessian product.

        Same values as ``jax.grad(self.energy)``. The JVP in ``y`` (the Hessian-vector
        product) is ``Σ_pairs K (v_i - v_j)`` with the pair stiffness blocks ``K`` of
        :meth:`pair_stiffness`: a gather, a d×d block product and a scatter, about four
        times cheaper than forward-over-reverse autodiff at N = 1024.

        Args:
          pairs, active: the pair list and the 0/1 particle mask (constants).
          stiffness: optional blocks precomputed at the one point ``(y0, params0)`` where
            the JVP will be evaluated (an implicit derivative at a minimum evaluates every
            Hessian-vector product there). XLA does not reliably hoist the block
            computation out of a solver's loop, so passing them saves recomputing them at
            every product. The caller guarantees that the point is the same; without
            ``stiffness`` the blocks are computed from the primal point (always right).
        """
        n = self.n

        def plain(y, params):
            return jax.grad(self.energy)(y, params, pairs, active)

        def product(y, params, y_dot):
            blocks = (self.pair_stiffness(y, params, pairs, active)
                      if stiffness is None else stiffness)
            i = jnp.minimum(pairs.i, n - 1)
            j = jnp.minimum(pairs.j, n - 1)
            dv = y_dot[i] - y_dot[j]
            d = dv.shape[-1]
            # written out per component: XLA fuses it (a batched d×d dot is slower)
            f = jnp.stack([sum(blocks[:, a, c] * dv[:, c] for c in range(d))
                           for a in range(d)], axis=-1)
            return jax.ops.segment_sum(f, i, n) - jax.ops.segment_sum(f, j, n)

        return with_position_jvp(plain, product)

    def shift(self, y, dy):
        """``shift_fn(y, dy)`` (jax-md's: in a box, ``mod(y + dy, box)``), bit for bit, with
        :func:`~systems._jaxmd.wrap_mod` in an orthorhombic box."""
        if self.periodic and np.ndim(self.box) == 1:
            return wrap_mod(y + dy, jnp.asarray(self.box, jnp.float64))
        return self.shift_fn(y, dy)

    # ---- pair lists -------------------------------------------------------------------
    def use_neighbor_list(self, cutoff: float) -> bool:
        """Whether a cell-list neighbor list fits (auto: N >= 128 and box >= 3 cells)."""
        choice = self.spec.neighbor_list
        fits = self.periodic and bool(np.all(perpendicular_widths(self.box) / 3.0 > cutoff))
        if choice == "auto":
            return fits and self.n >= NEIGHBOR_LIST_MIN_PARTICLES
        if choice and not self.periodic:
            return False  # free space: dense pairs (documented)
        return bool(choice)

    @property
    def fractional_lists(self) -> bool:
        """Whether the neighbor list takes fractional coordinates (:meth:`list_positions`):
        a sheared cell with an upper-triangular matrix, the form jax-md's cell lists in a
        general box accept."""
        return (self.periodic and np.ndim(self.box) == 2
                and bool(np.all(np.tril(self.box, -1) == 0)))

    def list_positions(self, y):
        """The positions the neighbor list is given: ``y`` itself, or in a sheared cell with
        :attr:`fractional_lists` its fractional coordinates ``H⁻¹ y``."""
        if not self.fractional_lists:
            return y
        return y @ jnp.asarray(np.linalg.inv(self.box).T, jnp.float64)

    def interacting_pairs(self, y, params: PotentialParams,
                          margin: float = INTERACTING_MARGIN) -> Pairs:
        """The compact half list (i < j) of pairs within ``margin × range`` at ``y``.

        Built on the host (:func:`systems._system.pairs_within`): no compilation, so it costs
        the same for every packing of a sweep. Used where the pair set stays fixed:
        derivatives at a minimum, contact analysis.
        """
        cutoff = margin * self.interaction_range(params) / float(np.asarray(params.scale))
        box = np.asarray(self.box, np.float64) if self.periodic else None
        ij = pairs_within(y, cutoff, box)
        return Pairs.from_arrays(ij[:, 0], ij[:, 1])



class _ModelStatic:
    """The static part of a :class:`PairModel` pytree, equal (and hashed) by value."""

    __slots__ = ("fields", "key")

    def __init__(self, model: PairModel):
        self.fields = (model.spec, model.box, model.periodic, model.dim,
                       model.displacement_fn, model.shift_fn)
        self.key = model.static_key()

    def __eq__(self, other):
        return isinstance(other, _ModelStatic) and self.key == other.key

    def __hash__(self):
        return hash(self.key)

    def __stable_key__(self):
        """What a disk cache of compiled code keys on (:mod:`systems._exports`): the key
        (the space functions are made from the box and boundary, which it holds)."""
        return self.key


def _flatten_model(model: PairModel):
    return (model.species,), _ModelStatic(model)


def _unflatten_model(static: _ModelStatic, children):
    spec, box, periodic, dim, displacement_fn, shift_fn = static.fields
    return PairModel(spec=spec, species=children[0], box=box, periodic=periodic, dim=dim,
                     displacement_fn=displacement_fn, shift_fn=shift_fn)


jax.tree_util.register_pytree_node(PairModel, _flatten_model, _unflatten_model)
