"""Pair laws ``V(r; σ, ε, ...)``: the formulas of ``jax_md.energy``, elementwise.

Written here because importing ``jax_md.energy`` imports jax-md's neural networks (1.2 s);
``tests/physics/test_potentials.py`` checks them, their gradients included, against jax-md.
:class:`systems.potentials.PairModel` lifts them to a packing's energy.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["lennard_jones", "morse", "smooth_cutoff", "soft_sphere"]


def soft_sphere(r, sigma, epsilon, alpha):
    """Harmonic-like overlap energy ``V = ε/α (1 - r/σ)^α`` for ``r < σ``, 0 beyond
    (O'Hern et al., Phys. Rev. E 68, 011306 (2003)); finite gradients at ``r = σ``."""
    x = r / sigma
    inside = x < 1.0
    overlap = jnp.where(inside, 1.0 - x, 1.0)  # the unused branch stays differentiable
    return jnp.where(inside, epsilon / alpha * overlap**alpha, 0.0)


def lennard_jones(r, sigma, epsilon):
    """``V = 4ε((σ/r)^12 - (σ/r)^6)`` (non-finite values, at r = 0, set to finite ones)."""
    inverse = (sigma / r) ** 2
    inverse6 = inverse * inverse * inverse
    return jnp.nan_to_num(4.0 * epsilon * (inverse6 * inverse6 - inverse6))


def morse(r, sigma, epsilon, alpha):
    """``V = ε(1 - exp(-α(r - σ)))² - ε``: a minimum ``-ε`` at ``r = σ``."""
    return jnp.nan_to_num(epsilon * (1.0 - jnp.exp(-alpha * (r - sigma))) ** 2 - epsilon)


def smooth_cutoff(r, r_onset, r_cutoff):
    """HOOMD-blue's C¹ switch ``S(r)``: 1 below ``r_onset``, 0 beyond ``r_cutoff``, and
    ``(r_c² - r²)² (r_c² + 2r² - 3r_o²) / (r_c² - r_o²)³`` between."""
    rc2, ro2, r2 = r_cutoff**2, r_onset**2, r**2
    inner = jnp.where(r < r_cutoff, (rc2 - r2) ** 2 * (rc2 + 2 * r2 - 3 * ro2) / (rc2 - ro2) ** 3,
                      0.0)
    return jnp.where(r < r_onset, 1.0, inner)
