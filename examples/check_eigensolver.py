"""Check an eigensolver against SciPy and against closed-form spectra.

Runs spectral_jax's LOBPCG (and SciPy's eigsh beside it) on three problems whose spectra are
known exactly, and compares eigenpairs up to sign and up to rotation inside clusters of equal
eigenvalues with `spectral_jax.testing.assert_eigenpairs_close`:

* the path-graph Laplacian (simple eigenvalues 2 − 2cos(πj/n));
* the 12×12 grid Laplacian (degenerate pairs: any basis of their eigenspace is right);
* DSM's generalised problem (D − W) y = λ D y on a ring (SPEC §3).

Swap `my_solver` for your own (same signature: dense A, optional B, k → eigenvalues ascending,
eigenvectors (n, k)) to test it the same way.

  python examples/check_eigensolver.py
"""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse.linalg

from spectral_jax import eigensolvers, testing

jax.config.update("jax_enable_x64", True)   # float64: compare at 1e-8, not float32's 1e-4


def my_solver(a, k, b=None):
  """The solver under test: spectral_jax's LOBPCG, k smallest pairs, 4 guard vectors."""
  x0 = np.random.default_rng(0).normal(size=(a.shape[0], k + 4))
  res = eigensolvers.lobpcg(jnp.asarray(a), jnp.asarray(x0), B=None if b is None else
                            jnp.asarray(b), k=k, tol=1e-10)
  assert bool(res.converged.all()), f"not converged: residuals {res.residual_norms}"
  return np.asarray(res.eigenvalues), np.asarray(res.eigenvectors)


def scipy_solver(a, k, b=None):
  """SciPy's shift-invert Lanczos, the call DSM's code makes (SPEC §3)."""
  lam, vec = scipy.sparse.linalg.eigsh(a, k, M=b, sigma=-1e-6, which="LM")
  order = np.argsort(lam)
  return lam[order], vec[:, order]


def main() -> None:
  lap, lam, vec = testing.path_laplacian(200)
  grid, grid_lam, grid_vec = testing.grid_laplacian(12, 12)
  w, d, ring_lam = testing.ring_normalised_laplacian(150)
  k = 9    # the grid's first 9 eigenvalues hold whole clusters (check with eigenvalue_clusters)
  print("cluster sizes of the grid's first eigenvalues:",
        [b - a for a, b in testing.eigenvalue_clusters(grid_lam[:k])])
  for name, solver in (("spectral_jax.lobpcg", my_solver), ("scipy eigsh", scipy_solver)):
    got = solver(lap, k)
    path = testing.assert_eigenpairs_close(*got, lam[:k], vec[:, :k], eigenvalue_atol=1e-8,
                                           max_angle_deg=1e-3)
    got = solver(grid, k)
    grid_rep = testing.assert_eigenpairs_close(*got, grid_lam[:k], grid_vec[:, :k],
                                               eigenvalue_atol=1e-8, max_angle_deg=1e-3)
    got_lam, got_vec = solver(d - w, 5, d)   # (D − W) y = λ D y; 5 = whole clusters (1+2+2)
    np.testing.assert_allclose(got_lam, ring_lam[:5], atol=1e-8)
    # No closed-form basis needed for the vectors: the residual and D-orthonormality say it.
    resid = np.abs((d - w) @ got_vec - d @ got_vec * got_lam).max()
    ortho = np.abs(got_vec.T @ d @ got_vec - np.eye(5)).max()
    print(f"{name:20s} path: max|Δλ| {path.eigenvalue_error.max():.1e}, max angle "
          f"{path.angles_deg.max():.1e}°; grid: max|Δλ| {grid_rep.eigenvalue_error.max():.1e}, "
          f"max angle {grid_rep.angles_deg.max():.1e}°; ring (D−W)y=λDy: residual {resid:.1e}, "
          f"|YᵀDY − I| {ortho:.1e}")
  print("all checks passed")


if __name__ == "__main__":
  main()
