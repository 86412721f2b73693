"""Forces of a pair potential from the pair law's derivative, without autodiff of the gathers.

``-jax.grad(PairModel.energy)`` transposes the pair gathers ``y[i]``, ``y[j]`` into two
scatter-adds and every branch on the way (the minimum-image ``cond`` among them), with the
bookkeeping of reverse mode around them. Here the force is written out: per pair the scalar
derivative ``V'(r)`` of the pair law (forward mode, elementwise), times the displacement over
``r``, mapped back to reference coordinates, and summed per particle by two segment sums; the
minimum image is branch-free (:func:`~systems._jaxmd.nearest_image`). The same numbers as
``-jax.grad(model.energy)`` up to round-off (the order of the sums differs), for every pair
law, box (square, sheared, free), strain, scale and ``active`` mask;
``tests/physics/test_pair_forces.py`` checks them against it. The FIRE loop of
:mod:`systems.relax` takes its forces from here (figures in ``benchmarks/README.md``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._jaxmd import nearest_image

__all__ = ["energy_and_forces"]


def energy_and_forces(model, y, params, pairs, active=None, with_energy: bool = True):
    """``(E, -∇_y E)`` of ``model.energy(y, params, pairs, active)`` (``E`` is NaN unless
    ``with_energy``).

    Each pair's displacement is a translation of ``y_i - y_j`` (the minimum image), so
    ``∂E/∂y_i = -∂E/∂y_j = Fᵀ w V'(r) dr/r`` with ``dr = F (y_i - y_j)`` the real
    displacement and ``F = λ (I + ε)`` the deformation.
    """
    n = y.shape[0]
    valid = (pairs.weight != 0) & (pairs.i < n) & (pairs.j < n) & (pairs.i != pairs.j)
    i = jnp.minimum(pairs.i, n - 1)
    j = jnp.minimum(pairs.j, n - 1)
    if model.periodic and np.ndim(model.box) == 1:
        d = nearest_image(y[i] - y[j], jnp.asarray(model.box, jnp.float64))
    else:
        d = jax.vmap(model.displacement_fn)(y[i], y[j])
    dr = d * params.scale
    if params.strain is not None:
        dr = dr + dr @ jnp.asarray(params.strain).T
    r2 = jnp.sum(dr * dr, axis=-1)
    valid = valid & (r2 > 0)
    r = jnp.sqrt(jnp.where(valid, r2, 1.0))
    si, sj = model.species[i], model.species[j]
    sigma = model._pair_sigma(params, i, j)
    epsilon = params.epsilon[si, sj]
    w = pairs.weight
    if active is not None:
        w = w * active[i] * active[j]

    def law(r):
        return model.pair_law(r, sigma, epsilon, si, sj)

    v, dv = jax.jvp(law, (r,), (jnp.ones_like(r),))
    coef = jnp.where(valid, w * dv / r, 0.0)
    g = coef[:, None] * dr  # ∂E/∂dr per pair
    if params.strain is not None:
        g = g + g @ jnp.asarray(params.strain)
    g = g * params.scale  # ∂E/∂y_i = -∂E/∂y_j
    force = jax.ops.segment_sum(g, j, n) - jax.ops.segment_sum(g, i, n)
    energy = jnp.sum(jnp.where(valid, w * v, 0.0)) if with_energy else jnp.nan
    return energy, force
