"""Composing the affine steps between two activations into layer matrices, dense or sparse.

The parser collects the affine steps that follow one activation (``v -> S_j v + c_j``, one per node) and
turns them into layers at the next activation. :class:`PendingAffine` holds them as a list of factors
``F_k ... F_1`` and one offset, and decides at the activation which factors to multiply, so that memory
stays proportional to the stored weights.

Rules
-----
* **Diagonal steps stay diagonal.** An elementwise scale (``Mul``, ``Div``, ``Neg``,
  ``BatchNormalization``) scales the rows of the latest factor in its own storage; with no factor yet it
  is a CSR diagonal, never an ``n × n`` dense array. Offsets (``Add``, ``Sub``, biases) are one vector:
  ``a -> S a + c``.
* **Factors are multiplied when the product is not much larger than the factors.** Adjacent factors
  ``A`` then ``B`` are replaced by ``B A`` when it stores at most ``COMPOSE_GROWTH`` times the entries
  of ``A`` and ``B`` together and at most ``MAX_LAYER_ELEMENTS``; the pair with the smallest ratio goes
  first, until no pair qualifies. Two dense factors always multiply up to the cap (a dense product is
  never larger than ``out × in``; this keeps dense generators as they always were). A selection (Resize,
  Pad, Slice, Transpose) or a diagonal *before* a matrix never grows it, so "Upsample, Conv" becomes one
  matrix; a small dense ``Gemm`` (latent -> C·4·4) followed by a ``ConvTranspose`` becomes one dense
  ``(out × latent)`` matrix. An upsampling *after* a dense matrix repeats its rows (s² times the
  entries), so it stays a separate layer.
* **Factors that stay apart become layers with the identity activation** (zero bias; the offset goes
  to the last one, which takes the activation). This changes the layer list the inversion sees, so the
  parser reports it in the generator's notes. Two convolutions with no activation between them may
  stay apart when the product fills in.
* **Storage**: dense stays dense; a sparse product at least ``DENSE_FILL`` full (e.g. a
  ``ConvTranspose`` of a 1×1 latent, where every output reads every input) is stored dense, which is
  no larger and multiplies faster.

The layer size cap counts stored entries (``nnz`` for CSR, ``out × in`` for dense), never ``out × in``
of a sparse matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from onnxinv.layers import Activation, Layer, Weight

# A layer matrix storing more entries than this is refused (one step) or not formed (a product).
MAX_LAYER_ELEMENTS = 1 << 27
# A product of two factors may store this many times the entries of the two together.
COMPOSE_GROWTH = 2.0
# A CSR result with at least this share of non-zeros is stored dense.
DENSE_FILL = 0.5


def entries(matrix: Weight) -> int:
    """Stored entries of a matrix: nnz for sparse, out × in for dense."""
    if isinstance(matrix, np.ndarray):
        return int(matrix.size)
    return int(matrix.nnz)


def product_entries_bound(step: Weight, matrix: Weight) -> int:
    """An upper bound on the stored entries of ``step @ matrix`` (exact when either is dense)."""
    rows, cols = step.shape[0], matrix.shape[1]
    if not sp.issparse(step) or not sp.issparse(matrix):
        return rows * cols
    row_nnz = np.diff(sp.csr_array(matrix).indptr)
    # every stored entry S[i, j] brings at most the stored entries of row j of the matrix
    return int(min(rows * cols, int(row_nnz[sp.csr_array(step).indices].sum())))


def finish(matrix: Weight) -> Weight:
    """Canonical storage: CSR (sorted, no duplicates) unless at least DENSE_FILL full."""
    if not sp.issparse(matrix):
        return matrix
    out = sp.csr_array(matrix)
    size = out.shape[0] * out.shape[1]
    if out.nnz >= DENSE_FILL * size and size <= MAX_LAYER_ELEMENTS:
        return out.toarray()
    if not out.has_canonical_format:
        out.sum_duplicates()
    return out


def diagonal(scale: np.ndarray) -> sp.csr_array:
    """The CSR diagonal matrix of ``scale``."""
    n = scale.size
    return sp.csr_array((np.asarray(scale, dtype=np.float64), np.arange(n), np.arange(n + 1)), shape=(n, n))


def scale_rows(scale: np.ndarray, matrix: Weight) -> Weight:
    """``diag(scale) @ matrix`` in the matrix's own storage."""
    if sp.issparse(matrix):
        csr = sp.csr_array(matrix)
        data = csr.data * np.repeat(scale, np.diff(csr.indptr))
        # a new data array; the index arrays are shared, never written
        out = sp.csr_array((data, csr.indices, csr.indptr), shape=csr.shape, copy=False)
        out.has_sorted_indices = csr.has_sorted_indices
        return out
    return scale[:, None] * matrix


def matmul(a: Weight, b: Weight) -> Weight:
    """``a @ b``: sparse when both are sparse, else a dense array."""
    if sp.issparse(a) and sp.issparse(b):
        return sp.csr_array(a @ b)
    if sp.issparse(a):
        return np.asarray(a @ np.asarray(b))
    if sp.issparse(b):
        return np.asarray((sp.csr_array(b).T @ np.asarray(a).T).T)
    return a @ b


def apply(matrix: Weight, vector: np.ndarray) -> np.ndarray:
    """``matrix @ vector`` as a dense float64 vector."""
    return np.asarray(matrix @ vector, dtype=np.float64).reshape(-1)


def merge_factors(
    factors: list[Weight], labels: list[list[str]] | None = None
) -> tuple[list[Weight], list[list[str]]]:
    """Multiply adjacent factors (application order: ``factors[0]`` first) by the module's rule.

    ``labels`` names the nodes behind each factor; merged factors join their names. Returns the
    remaining factors and their names.
    """
    factors = list(factors)
    names = [list(g) for g in labels] if labels is not None else [[] for _ in factors]
    # candidate products of neighbours, by position; recomputed only next to a merge
    candidates: list[Weight | None] = [_allowed_product(b, a) for a, b in zip(factors, factors[1:])]
    while candidates:
        best: tuple[float, int] | None = None
        for j, product in enumerate(candidates):
            if product is None:
                continue
            ratio = entries(product) / max(1, entries(factors[j]) + entries(factors[j + 1]))
            if best is None or ratio < best[0]:
                best = (ratio, j)
        if best is None:
            break
        j = best[1]
        product = candidates[j]
        factors[j : j + 2] = [product]
        names[j : j + 2] = [names[j] + names[j + 1]]
        candidates[max(0, j - 1) : j + 2] = [
            _allowed_product(factors[i + 1], factors[i])
            for i in range(max(0, j - 1), min(j + 1, len(factors) - 1))
        ]
    return factors, names


# Rows sampled to estimate the size of a sparse product before forming it.
_SAMPLE_ROWS = 256


def _allowed_product(b: Weight, a: Weight) -> Weight | None:
    """``b @ a`` if the composition rule allows it, else None (without forming a hopeless product)."""
    bound = product_entries_bound(b, a)
    if bound > MAX_LAYER_ELEMENTS:
        return None
    factors = entries(a) + entries(b)
    if not sp.issparse(a) and not sp.issparse(b):
        return b @ a  # dense generators compose as they always have
    if not (sp.issparse(a) and sp.issparse(b)):
        # the product is dense, of exactly ``bound`` entries
        return finish(matmul(b, a)) if bound <= COMPOSE_GROWTH * factors else None
    if bound > COMPOSE_GROWTH * factors:
        # estimate from evenly spaced rows: convolution rows are alike away from the borders
        rows = np.unique(np.linspace(0, b.shape[0] - 1, min(_SAMPLE_ROWS, b.shape[0])).astype(np.int64))
        sampled = sp.csr_array(sp.csr_array(b)[rows] @ a).nnz
        if sampled * b.shape[0] / rows.size > 1.25 * COMPOSE_GROWTH * factors:
            return None
    product = finish(matmul(b, a))
    return product if entries(product) <= COMPOSE_GROWTH * factors else None


@dataclass
class PendingAffine:
    """The affine map ``v -> F_k ... F_1 v + offset`` accumulated since the last activation.

    ``size`` is the current vector size (the output size of the latest factor, or the input size).
    """

    size: int
    factors: list[Weight] = field(default_factory=list)
    labels: list[list[str]] = field(default_factory=list)
    offset: np.ndarray | None = None
    loose: list[str] = field(default_factory=list)  # nodes seen before the first factor

    @property
    def empty(self) -> bool:
        return not self.factors and self.offset is None

    @property
    def last_label(self) -> str | None:
        """The node named last (a node with several steps is named once)."""
        for group in reversed(self.labels):
            if group:
                return group[-1]
        return self.loose[-1] if self.loose else None

    def push(
        self,
        label: str,
        out_size: int,
        matrix: Weight | None = None,
        scale: np.ndarray | None = None,
        offset: np.ndarray | None = None,
    ) -> None:
        """Apply one step ``v -> matrix v`` or ``v -> scale * v``, then ``+ offset``."""
        again = label == self.last_label  # a further step of the same node: named once
        if matrix is not None:
            self.factors.append(finish(matrix))
            self.labels.append([] if again else [label])
            if self.offset is not None:
                self.offset = apply(matrix, self.offset)
        elif scale is not None:
            scale = np.asarray(scale, dtype=np.float64).reshape(-1)
            if self.factors:
                self.factors[-1] = scale_rows(scale, self.factors[-1])
                if not again:
                    self.labels[-1].append(label)
            else:
                self.factors.append(diagonal(scale))
                self.labels.append([] if again else [label])
            if self.offset is not None:
                self.offset = scale * self.offset
        elif again:
            pass
        elif self.factors:
            self.labels[-1].append(label)
        else:
            self.loose.append(label)
        if offset is not None:
            offset = np.asarray(offset, dtype=np.float64).reshape(-1)
            self.offset = offset.copy() if self.offset is None else self.offset + offset
        self.size = out_size

    def close(
        self, activation: Activation, slope: float | np.ndarray, label: str | None
    ) -> tuple[list[Layer], str | None]:
        """The layers of the pending map, the last with ``activation``; and a note if it was split."""
        if self.factors:
            factors, groups = merge_factors(self.factors, self.labels)
        else:
            factors, groups = [diagonal(np.ones(self.size))], [[]]
        groups[0] = [*self.loose, *groups[0]]
        if label:
            groups[-1] = [*groups[-1], label]
        note = None
        if len(factors) > 1:
            names = [n for group in groups for n in group] or ["?"]
            note = (
                f"nodes {names[0]} .. {names[-1]} are kept as {len(factors)} linear layers "
                "(identity activation between them): multiplying them out would store more than "
                f"{COMPOSE_GROWTH:g} times the entries of the factors ("
                + " + ".join(f"{entries(f):,}" for f in factors)
                + ")"
            )
        layers = []
        for i, (factor, group) in enumerate(zip(factors, groups)):
            last = i == len(factors) - 1
            if last:
                bias = np.zeros(factor.shape[0]) if self.offset is None else self.offset
                layers.append(Layer(factor, bias, activation, slope, tuple(group)))
            else:
                layers.append(
                    Layer(factor, np.zeros(factor.shape[0]), Activation.IDENTITY, 0.0, tuple(group))
                )
        self.factors, self.labels, self.offset, self.loose = [], [], None, []
        return layers, note
