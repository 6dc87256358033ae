"""PCA projection of backbone descriptors to the index dimension, learned at index time.

Stored beside the index as plain arrays (npz, no pickle) because it belongs to the
registry it was learned on: every vector in the index, and every query, goes
through the same projection.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Projection:
    """y = normalise((x - mean) @ matrix); matrix is (in_dim, out_dim)."""

    mean: np.ndarray
    matrix: np.ndarray
    whiten: float

    @property
    def in_dim(self) -> int:
        return self.matrix.shape[0]

    @property
    def out_dim(self) -> int:
        return self.matrix.shape[1]

    def apply(self, x: np.ndarray) -> np.ndarray:
        y = (np.asarray(x, dtype=np.float32) - self.mean) @ self.matrix
        return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, mean=self.mean, matrix=self.matrix, whiten=np.float32(self.whiten))

    @classmethod
    def load(cls, path: str | Path) -> "Projection":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["mean"].astype(np.float32), z["matrix"].astype(np.float32),
                       float(z["whiten"]))


def fit_pca(x: np.ndarray, out_dim: int, whiten: float = 0.5) -> Projection:
    """PCA of the rows of `x` to `out_dim` components, with shrunk partial whitening
    (fit_pca_chunks, the rows in one chunk)."""
    return fit_pca_chunks(lambda: iter((x,)), out_dim, whiten)


def fit_pca_chunks(chunks: Callable[[], Iterable[np.ndarray]], out_dim: int,
                   whiten: float = 0.5) -> Projection:
    """PCA of rows that come in chunks, to `out_dim` components, with shrunk partial
    whitening. `chunks()` is called twice (the mean, then the covariance about it), so a
    register of millions is fitted whole from disk with one chunk in memory at a time.

    `whiten` in [0, 1] scales component i by eigval_i ** (-whiten / 2): 0 keeps each
    direction's energy, 1 whitens fully. Partial whitening lifts the rarer directions
    that tell similar marks apart.

    The eigenvalues come from a covariance shrunk towards isotropy by d / (n + d)
    (n samples, d dimensions). A few thousand samples estimate 1280 variances
    poorly, and whitening by raw estimates makes a small registry's marks look
    mutually orthogonal; the shrinkage fades out as the registry grows.
    """
    n, total = 0, None
    for x in chunks():
        x = np.asarray(x, dtype=np.float64)
        total = x.sum(axis=0) if total is None else total + x.sum(axis=0)
        n += len(x)
    if total is None or n == 0:
        raise ValueError("cannot fit a PCA on 0 descriptors")
    d = len(total)
    if out_dim > d:
        raise ValueError(f"cannot project {d}-d descriptors to {out_dim} dimensions")
    mean = total / n
    # Centred before the product, as np.cov does: float64 sums of centred rows lose
    # nothing measurable at millions of rows.
    scatter = np.zeros((d, d))
    for x in chunks():
        centred = np.asarray(x, dtype=np.float64) - mean
        scatter += centred.T @ centred
    cov = scatter / (n - 1) if n > 1 else scatter
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1][:out_dim]
    eigval, eigvec = np.maximum(eigval[order], 0.0), eigvec[:, order]
    eigvec = _fixed_null_space(eigval, eigvec)
    shrink = d / (n + d)
    isotropic = max(np.trace(cov) / d, 1e-12)
    eigval = (1 - shrink) * eigval + shrink * isotropic
    matrix = (eigvec * eigval ** (-whiten / 2)).astype(np.float32)
    return Projection(mean.astype(np.float32), matrix, float(whiten))


# Eigenvalues below this fraction of the largest are rounding, not variance.
NULL_EIGENVALUE = 1e-10


def _fixed_null_space(eigval: np.ndarray, eigvec: np.ndarray) -> np.ndarray:
    """`eigvec` with its null-space columns replaced by a basis that depends on the data's
    span only.

    A registry of fewer marks than output dimensions (the 300-mark sample: 225 fitted,
    512 kept) spans fewer directions than it keeps; the rest come from the null space,
    where eigh returns whatever basis its rounding leads to. Descriptors 2e-7 apart
    (OpenVINO against PyTorch) then kept different null directions, and the queries'
    vectors, which reach into them, moved by up to 0.18: another threshold from the same
    marks. A fixed random matrix (seed 0), projected off the data's span and
    orthonormalised, picks the same directions for the same span every time."""
    null = eigval <= NULL_EIGENVALUE * max(float(eigval[0]) if len(eigval) else 0.0, 1e-300)
    if not null.any():
        return eigvec
    kept = eigvec[:, ~null]
    r = np.random.default_rng(0).standard_normal((eigvec.shape[0], int(null.sum())))
    r -= kept @ (kept.T @ r)
    basis, _ = np.linalg.qr(r)
    return np.concatenate([kept, basis], axis=1)
