"""Synthetic 512-d mark vectors for scale tests, shaped like real descriptors.

Real descriptors are not uniform on the sphere: marks come in families (a brand's
variants, a common motif) and a family varies in its own few ways. So each vector is
    c_f                 the centre of its family f (N(0, I_512)); about 200 marks a family
    + 0.5 * B_f u       u ~ N(0, I_8): variation inside the family's own 8-d subspace
    + 0.35 * e          e ~ N(0, I_512): everything else
then L2-normalised. Queries are drawn the same way and are never indexed; their exact
top-10 neighbours score ~0.8-0.95. Deterministic for a seed; generated in chunks.
How much an approximate index loses depends on such structure: on vectors with no
families at all (uniform on the sphere) IVF and HNSW need far more probing for the same
recall, and the benchmark's ratios would be smaller.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

DIM = 512
FAMILY_SIZE = 200
LATENT = 8
NOISE = 0.35


def vectors(n: int, dim: int = DIM, seed: int = 0, families: int | None = None,
            chunk: int = 50_000) -> np.ndarray:
    out = np.empty((n, dim), np.float32)
    for s, x in chunks(n, dim, seed, families, chunk):
        out[s:s + len(x)] = x
    return out


def chunks(n: int, dim: int = DIM, seed: int = 0, families: int | None = None,
           chunk: int = 50_000) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) of `vectors(n, ...)` a chunk at a time, for N whose floats do
    not fit in memory."""
    families = families or max(10, n // FAMILY_SIZE)
    base = np.random.default_rng(12345 + families)  # the same families for a given count
    centres = base.standard_normal((families, dim), dtype=np.float32)
    bases = base.standard_normal((families, LATENT, dim), dtype=np.float32) / np.sqrt(LATENT)
    rng = np.random.default_rng(seed)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        f = rng.integers(0, families, m)
        u = rng.standard_normal((m, LATENT), dtype=np.float32)
        # einsum, not u @ bases[f]: numpy's matmul over 50k stacked 1x8 @ 8x512 products
        # took 5x as long as the rest of the chunk.
        x = centres[f] + 0.5 * np.einsum("ml,mld->md", u, bases[f])
        x += NOISE * rng.standard_normal((m, dim), dtype=np.float32)
        yield s, x / np.linalg.norm(x, axis=1, keepdims=True)
