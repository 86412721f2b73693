"""Projections against their definition (a constrained least-squares problem solved with SciPy,
or the Moreau certificate for the cones), Jacobians against closed forms and finite
differences, and the conventions on boundaries (finite, no NaN)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from catalog_helpers import (
    assert_close,
    central_fd_jacobian,
    jacobians_and_fd,
    jacobians_and_pointwise_fd,
)
from sensitivity import (
    kl_projection_simplex,
    projection_affine_set,
    projection_box,
    projection_box_section,
    projection_halfspace,
    projection_hypercube,
    projection_hyperplane,
    projection_l1_ball,
    projection_l2_ball,
    projection_l2_sphere,
    projection_linf_ball,
    projection_non_negative,
    projection_polyhedron,
    projection_psd_cone,
    projection_second_order_cone,
    projection_simplex,
    smat,
    svec,
)

N = 6
RNG = np.random.default_rng(0)
X0 = RNG.normal(scale=1.5, size=N)
LOWER, UPPER = -0.5 * np.ones(N), np.linspace(0.2, 1.2, N)
A_VEC, B_SCALAR = RNG.normal(size=N), 0.3
A_MAT, B_VEC = RNG.normal(size=(2, N)), RNG.normal(size=2)
G_MAT = RNG.normal(size=(4, N))
H_VEC = G_MAT @ (0.1 * RNG.normal(size=N)) + 0.2  # a strictly feasible point exists
W_POS = RNG.uniform(0.5, 2.0, size=N)


def _scipy_projection(x, constraints=(), bounds=None, y0=None):
    res = scipy.optimize.minimize(
        lambda y: 0.5 * np.sum((y - x) ** 2),
        x if y0 is None else y0,
        jac=lambda y: y - x,
        method="SLSQP",
        constraints=list(constraints),
        bounds=bounds,
        options={"ftol": 1e-13, "maxiter": 1000},
    )
    return res.x


def _eq(fun):
    return {"type": "eq", "fun": fun}


def _ineq(fun):
    return {"type": "ineq", "fun": fun}


def _l1_ball_scipy(x, r):
    # y = u - v with u, v >= 0 and sum(u + v) <= r (smooth reformulation of ||y||_1 <= r)
    res = scipy.optimize.minimize(
        lambda w: 0.5 * np.sum((w[:N] - w[N:] - x) ** 2),
        np.zeros(2 * N),
        method="SLSQP",
        bounds=[(0, None)] * (2 * N),
        constraints=[_ineq(lambda w: r - np.sum(w))],
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    return res.x[:N] - res.x[N:]


# name -> (projection(x) with its hyperparameters bound, SciPy reference of x)
CASES = {
    "non_negative": (
        lambda x: projection_non_negative(x),
        lambda x: _scipy_projection(x, bounds=[(0, None)] * N),
    ),
    "box": (
        lambda x: projection_box(x, (jnp.asarray(LOWER), jnp.asarray(UPPER))),
        lambda x: _scipy_projection(x, bounds=list(zip(LOWER, UPPER))),
    ),
    "hypercube": (
        lambda x: projection_hypercube(x, 0.8),
        lambda x: _scipy_projection(x, bounds=[(0, 0.8)] * N),
    ),
    "simplex": (
        lambda x: projection_simplex(x, 1.3),
        lambda x: _scipy_projection(x, [_eq(lambda y: y.sum() - 1.3)], [(0, None)] * N),
    ),
    "l1_ball": (lambda x: projection_l1_ball(x, 1.1), lambda x: _l1_ball_scipy(x, 1.1)),
    "l2_ball": (
        lambda x: projection_l2_ball(x, 0.9),
        lambda x: _scipy_projection(x, [_ineq(lambda y: 0.81 - y @ y)], y0=np.zeros(N)),
    ),
    "linf_ball": (
        lambda x: projection_linf_ball(x, 0.6),
        lambda x: _scipy_projection(x, bounds=[(-0.6, 0.6)] * N),
    ),
    "l2_sphere": (
        lambda x: projection_l2_sphere(x, 0.9),
        lambda x: _scipy_projection(
            x, [_eq(lambda y: y @ y - 0.81)], y0=0.9 * x / np.linalg.norm(x)
        ),
    ),
    "hyperplane": (
        lambda x: projection_hyperplane(x, (jnp.asarray(A_VEC), B_SCALAR)),
        lambda x: _scipy_projection(x, [_eq(lambda y: A_VEC @ y - B_SCALAR)]),
    ),
    "halfspace": (
        lambda x: projection_halfspace(x, (jnp.asarray(A_VEC), B_SCALAR)),
        lambda x: _scipy_projection(x, [_ineq(lambda y: B_SCALAR - A_VEC @ y)]),
    ),
    "affine_set": (
        lambda x: projection_affine_set(x, (jnp.asarray(A_MAT), jnp.asarray(B_VEC))),
        lambda x: _scipy_projection(x, [_eq(lambda y: A_MAT @ y - B_VEC)]),
    ),
    "polyhedron": (
        lambda x: projection_polyhedron(
            x,
            (
                jnp.asarray(A_MAT[:1]),
                jnp.asarray(B_VEC[:1]),
                jnp.asarray(G_MAT),
                jnp.asarray(H_VEC),
            ),
        ),
        lambda x: _scipy_projection(
            x, [_eq(lambda y: A_MAT[:1] @ y - B_VEC[:1]), _ineq(lambda y: H_VEC - G_MAT @ y)]
        ),
    ),
    "box_section": (
        lambda x: projection_box_section(x, (-0.4, 0.9, jnp.asarray(W_POS), 0.7)),
        lambda x: _scipy_projection(x, [_eq(lambda y: W_POS @ y - 0.7)], [(-0.4, 0.9)] * N),
    ),
    "second_order_cone": (
        lambda x: projection_second_order_cone(x),
        lambda x: _scipy_projection(
            x,
            [_ineq(lambda y: y[0] - np.linalg.norm(y[1:]))],
            y0=np.concatenate([[np.linalg.norm(x) + 1.0], 0.5 * x[1:]]),
        ),
    ),
}


SOLVED = ("polyhedron", "box section", "box_section")  # projections computed by a solver


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.slow
def test_projection_is_the_argmin(name, seed):
    projection, reference = CASES[name]
    x = np.random.default_rng(10 + seed).normal(scale=1.5, size=N)
    # compiled (eager, the interior point and the bisection dispatch op by op)
    assert_close(jax.jit(projection)(jnp.asarray(x)), reference(x), atol=2e-6, what=name)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.slow
def test_projection_derivatives_match_finite_differences(name):
    projection = CASES[name][0]
    # the iterative projections: FD by calls of their forward program (compiled faster)
    jacobians = jacobians_and_pointwise_fd if name in SOLVED else jacobians_and_fd
    jac_fwd, jac_rev, fd = jacobians(projection, X0)
    atol = 1e-6 if name in ("polyhedron", "box_section") else 1e-8
    assert_close(jac_fwd, fd, atol=atol, what=name)
    assert_close(jac_rev, jac_fwd, atol=1e-9, what=name)


@pytest.mark.slow
def test_projections_are_idempotent():
    for name, (projection, _) in CASES.items():
        projection = jax.jit(projection)  # compiled once, used twice (not op by op)
        p = projection(jnp.asarray(X0))
        # (p lies on the polyhedron's boundary with weakly active constraints, zero
        # multipliers: the interior point alone gets there at sqrt(tol) only; polishing
        # the active set makes it exact.)
        assert_close(projection(p), p, atol=1e-12, what=name)


# --------------------------------------------------------------------------- simplex


@pytest.mark.slow
def test_simplex_jacobian_is_the_sparse_closed_form():
    x = jnp.array([0.9, -0.3, 0.5, 0.05, 1.4, -2.0])
    value = 1.5
    p = projection_simplex(x, value)
    s = (p > 0).astype(float)
    expected = np.diag(s) - np.outer(s, s) / s.sum()
    assert 1 < s.sum() < N  # a non-trivial support
    assert_close(jax.jacfwd(projection_simplex)(x, value), expected, atol=1e-15)
    assert_close(jax.jacrev(projection_simplex)(x, value), expected, atol=1e-15)
    assert_close(jax.grad(lambda v: projection_simplex(x, v)[0])(value), 1 / s.sum(), atol=1e-15)
    assert_close(
        central_fd_jacobian(lambda u: projection_simplex(u, value), x), expected, atol=1e-8
    )


@pytest.mark.slow
def test_simplex_at_a_kink_and_with_ties():
    # x_3 sits exactly at the threshold tau: it is outside the support (clamped convention)
    x = jnp.array([1.0, 0.5, 0.25])  # projection onto the unit simplex: tau = 0.25
    p = projection_simplex(x)
    assert_close(p, [0.75, 0.25, 0.0], atol=1e-15)
    assert_close(
        jax.jacfwd(projection_simplex)(x), [[0.5, -0.5, 0], [-0.5, 0.5, 0], [0, 0, 0]], atol=1e-15
    )
    # all-equal inputs: uniform output and the centred Jacobian, no NaN
    x = jnp.zeros(4)
    assert_close(projection_simplex(x), np.full(4, 0.25), atol=1e-15)
    assert_close(jax.jacrev(projection_simplex)(x), np.eye(4) - 0.25, atol=1e-15)


@pytest.mark.slow
def test_simplex_is_row_wise_under_vmap_and_kl_projection():
    xs = jnp.asarray(RNG.normal(size=(3, 5)))
    ps = jax.vmap(projection_simplex)(xs)
    assert_close(ps.sum(axis=1), np.ones(3), atol=1e-14)
    q = kl_projection_simplex(xs[0], 2.0)
    assert_close(q, 2.0 * np.exp(xs[0]) / np.exp(xs[0]).sum(), atol=1e-14)


# --------------------------------------------------------------------------- other boundaries


@pytest.mark.slow
def test_boundary_conventions_are_finite():
    # non-negative orthant and box: tight constraint treated as active
    x = jnp.array([0.0, -0.5, 1.2])
    assert_close(jnp.diag(jax.jacfwd(projection_non_negative)(x)), [0, 0, 1], atol=0)
    lower, upper = jnp.array([-1.0, -0.5, -1.0]), jnp.array([1.0, 1.0, 1.2])
    jac_x, (jac_lo, jac_up) = jax.jacfwd(projection_box, argnums=(0, 1))(x, (lower, upper))
    assert_close(jnp.diag(jac_x), [1, 0, 0], atol=0)
    assert_close(jnp.diag(jac_lo), [0, 1, 0], atol=0)
    assert_close(jnp.diag(jac_up), [0, 0, 1], atol=0)
    # l2 ball, sphere, l1 ball and the second-order cone at 0: finite, no NaN
    zero = jnp.zeros(4)
    for projection in (
        projection_l2_ball,
        projection_l2_sphere,
        projection_l1_ball,
        projection_second_order_cone,
    ):
        # one compiled program per projection (eager, each operation compiles alone)
        jac, grad = jax.jit(lambda u: (jax.jacfwd(projection)(u),
                                       jax.grad(lambda v: jnp.sum(projection(v) ** 2))(u)))(zero)
        assert np.all(np.isfinite(jac)) and np.all(np.isfinite(grad)), projection.__name__
    assert_close(projection_l2_sphere(zero, 2.0), [2.0, 0, 0, 0], atol=0)
    assert_close(jax.jacfwd(projection_l2_sphere)(zero), np.zeros((4, 4)), atol=0)
    assert_close(projection_second_order_cone(zero), zero, atol=0)
    # on the l2 sphere of the ball: the derivative is the radial projection's (active)
    x = jnp.array([0.6, 0.8])
    assert_close(jax.jacfwd(projection_l2_ball)(x), np.eye(2) - np.outer(x, x), atol=1e-15)


def test_second_order_cone_three_regimes():
    inside = jnp.array([2.0, 0.5, -1.0])
    polar = jnp.array([-2.0, 0.5, -1.0])
    outside = jnp.array([0.5, 3.0, -4.0])
    assert_close(projection_second_order_cone(inside), inside, atol=0)
    assert_close(projection_second_order_cone(polar), np.zeros(3), atol=0)
    p = projection_second_order_cone(outside)
    assert_close(p, 0.5 * (1 + 0.5 / 5) * np.array([5.0, 3.0, -4.0]), atol=1e-15)
    # Moreau: x = P_K(x) - P_K(-x) for the self-dual cone
    assert_close(p - projection_second_order_cone(-outside), outside, atol=1e-15)


def test_l1_ball_inside_is_identity():
    x = jnp.array([0.1, -0.2, 0.3])
    assert_close(projection_l1_ball(x, 1.0), x, atol=0)
    assert_close(jax.jacfwd(projection_l1_ball)(x, 1.0), np.eye(3), atol=0)


@pytest.mark.slow
def test_polyhedron_matches_box_section_and_affine_set():
    x = jnp.asarray(X0)
    # {w.y = c, alpha <= y <= beta} as a polyhedron
    G = jnp.concatenate([jnp.eye(N), -jnp.eye(N)])
    h = jnp.concatenate([0.9 * jnp.ones(N), 0.4 * jnp.ones(N)])

    def as_polyhedron(x):
        return projection_polyhedron(x, (jnp.asarray(W_POS)[None], jnp.array([0.7]), G, h))

    def as_box_section(x):
        return projection_box_section(x, (-0.4, 0.9, jnp.asarray(W_POS), 0.7))

    both = jax.jit(
        lambda x: (
            as_polyhedron(x),
            as_box_section(x),
            jax.jacfwd(as_polyhedron)(x),
            jax.jacfwd(as_box_section)(x),
        )
    )
    p_poly, p_box, jac_poly, jac_box = both(x)
    assert_close(p_poly, p_box, atol=1e-8)
    assert_close(jac_poly, jac_box, atol=1e-6)

    # equality constraints only: the closed-form affine projection, values and Jacobians
    def poly_of_b(b):
        return projection_polyhedron(x, (jnp.asarray(A_MAT), b, None, None))

    def affine_of_b(b):
        return projection_affine_set(x, (jnp.asarray(A_MAT), b))

    assert_close(
        jax.jit(poly_of_b)(jnp.asarray(B_VEC)), affine_of_b(jnp.asarray(B_VEC)), atol=1e-12
    )
    assert_close(
        jax.jit(jax.jacrev(poly_of_b))(jnp.asarray(B_VEC)),
        jax.jacrev(affine_of_b)(jnp.asarray(B_VEC)),
        atol=1e-10,
    )


@pytest.mark.slow
def test_hyperparameter_derivatives():
    x = jnp.asarray(X0)
    checks = {
        "box upper": (lambda u: projection_box(x, (jnp.asarray(LOWER), u)), jnp.asarray(UPPER)),
        "simplex value": (lambda v: projection_simplex(x, v), jnp.asarray(1.3)),
        "l2 radius": (lambda r: projection_l2_ball(x, r), jnp.asarray(0.9)),
        "hyperplane a": (lambda a: projection_hyperplane(x, (a, B_SCALAR)), jnp.asarray(A_VEC)),
        "halfspace b": (
            lambda b: projection_halfspace(x, (jnp.asarray(A_VEC), b)),
            jnp.asarray(-1.0),
        ),
        "affine A": (
            lambda A: projection_affine_set(x, (A, jnp.asarray(B_VEC))),
            jnp.asarray(A_MAT),
        ),
        "box section c": (
            lambda c: projection_box_section(x, (-0.4, 0.9, jnp.asarray(W_POS), c)),
            jnp.asarray(0.7),
        ),
        "box section w": (
            lambda w: projection_box_section(x, (-0.4, 0.9, w, 0.7)),
            jnp.asarray(W_POS),
        ),
        "polyhedron h": (
            lambda h: projection_polyhedron(x, (None, None, jnp.asarray(G_MAT), h)),
            jnp.asarray(H_VEC),
        ),
    }
    for name, (fun, theta) in checks.items():
        # the iterative projections: FD by calls of their forward program (compiled faster)
        jacobians = jacobians_and_pointwise_fd if name.startswith(SOLVED) else jacobians_and_fd
        jac_fwd, jac_rev, fd = jacobians(fun, theta)
        assert_close(jac_fwd, fd, atol=1e-6, what=name)
        assert_close(jac_rev, fd, atol=1e-6, what=name)


# --------------------------------------------------------------------------- PSD cone


def _random_symmetric(seed, n=4):
    M = np.random.default_rng(seed).normal(size=(n, n))
    return jnp.asarray(M + M.T)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_psd_projection_satisfies_the_moreau_certificate(seed):
    X = _random_symmetric(seed)
    P = np.asarray(projection_psd_cone(X))
    N_ = P - np.asarray(X)  # X = P - N with P, N PSD and <P, N> = 0 characterizes P
    assert np.linalg.eigvalsh(P).min() > -1e-12
    assert np.linalg.eigvalsh(N_).min() > -1e-12
    assert abs(np.sum(P * N_)) < 1e-12
    # a non-symmetric input is projected through its symmetric part
    skew = jnp.asarray(np.triu(np.random.default_rng(seed).normal(size=(4, 4)), 1))
    assert_close(projection_psd_cone(X + skew - skew.T), P, atol=1e-12)


@pytest.mark.slow
def test_psd_jacobian_matches_finite_differences():
    X = _random_symmetric(3)
    jac_fwd, jac_rev, fd = jacobians_and_fd(projection_psd_cone, X)  # one compiled program
    assert_close(jac_fwd, fd, atol=1e-7)
    assert_close(jac_rev, jac_fwd, atol=1e-12)


@pytest.mark.slow
def test_psd_jacobian_at_repeated_eigenvalues_is_finite():
    # the identity (all eigenvalues equal), and repeated positive and negative eigenvalues:
    # differentiating eigh gives NaN there; the custom rule gives the true derivative.
    Q = np.linalg.qr(np.random.default_rng(5).normal(size=(4, 4)))[0]
    jacobian = jax.jit(jax.jacfwd(projection_psd_cone))  # compiled once per shape, not op by op
    for eigenvalues in ([1.0, 1.0, 1.0, 1.0], [2.0, 2.0, -1.0, -1.0], [-1.0, -1.0, -1.0, -3.0]):
        X = jnp.asarray(Q @ np.diag(eigenvalues) @ Q.T)
        jac = jacobian(X)
        assert_close(
            jac,
            central_fd_jacobian(projection_psd_cone, X, h=1e-5),
            atol=1e-7,
            what=str(eigenvalues),
        )
    identity_jac = jacobian(jnp.eye(3))
    dX = jnp.asarray(np.random.default_rng(6).normal(size=(3, 3)))
    assert_close(jnp.einsum("ijkl,kl->ij", identity_jac, dX), 0.5 * (dX + dX.T), atol=1e-15)


@pytest.mark.slow
def test_svec_is_an_isometry():
    X, Y = _random_symmetric(7, 3), _random_symmetric(8, 3)
    assert_close(jnp.vdot(svec(X), svec(Y)), jnp.trace(X @ Y), atol=1e-12)
    assert_close(smat(svec(X)), X, atol=1e-15)
    with pytest.raises(ValueError, match="triangular"):
        smat(jnp.zeros(4))
