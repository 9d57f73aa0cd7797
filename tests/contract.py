"""The verdict contract as one reusable check, called by every inversion test (like PyLops' dot test).

``assert_contract(generator, x, result)`` recomputes everything the verdict rests on with the oracle
(onnxruntime), independently of the result's own numbers:

* an exit-0 verdict (unique / not unique / fits) has an onnxruntime residual within the tolerance;
* "not unique" carries a witness at distance >= δ that reproduces x through onnxruntime;
* "unique" carries a certificate (or, for noisy data, a radius), and never coexists with a second
  preimage the test knows (``known`` latents that reproduce x must lie within the radius / δ);
* "no preimage" carries a refutation, and never happens for an x the test made from a latent;
* "not found" / "no preimage" never report a fit.
"""

from __future__ import annotations

import numpy as np

from onnxinv.inversion import EvidenceKind, InversionResult, Verdict
from onnxinv.layers import Generator

CERTIFICATES = {EvidenceKind.LAYERWISE, EvidenceKind.MILP}
RADII = {EvidenceKind.STABILITY, EvidenceKind.MILP_BOUNDS}
WITNESSES = {EvidenceKind.WITNESS, EvidenceKind.NULL_DIRECTION}
REFUTATIONS = {EvidenceKind.LAYER_LP, EvidenceKind.MILP_INFEASIBLE}


def residual(
    generator: Generator, z: np.ndarray, x: np.ndarray, mask: np.ndarray | None = None
) -> tuple[float, float]:
    """(relative l2, max abs) of ``G(z) - x`` on the observed entries, G by onnxruntime."""
    out = generator.run_onnx(np.asarray(z, dtype=np.float64))
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if mask is not None:
        out, x = out[mask], x[mask]
    diff = out - x
    return float(np.linalg.norm(diff) / max(np.linalg.norm(x), 1e-300)), float(np.max(np.abs(diff)))


def fits(generator: Generator, z: np.ndarray, x: np.ndarray, result: InversionResult, mask=None) -> bool:
    """Does ``z`` reproduce ``x`` under the result's own fit rule (criterion and tolerance)?"""
    rel, linf = residual(generator, z, x, mask)
    if result.fit.criterion == "relative l2":
        return rel <= result.fit.tolerance
    if result.fit.criterion == "max abs":
        return linf <= result.fit.tolerance
    out = generator.run_onnx(np.asarray(z, dtype=np.float64))
    xx = np.asarray(x, dtype=np.float64).reshape(-1)
    if mask is not None:
        out, xx = out[mask], xx[mask]
    return float(np.sqrt(np.mean((out - xx) ** 2))) <= result.fit.tolerance


def assert_contract(
    generator: Generator,
    x: np.ndarray,
    result: InversionResult,
    *,
    mask: np.ndarray | None = None,
    in_range: bool = False,
    known: list[np.ndarray] | tuple[np.ndarray, ...] = (),
    distance: float = 1e-3,
) -> None:
    """Check ``result`` against the contract (module docstring).

    ``in_range``: the test made ``x`` from a latent (so "no preimage" is wrong); ``known``: latents the
    test knows reproduce ``x`` (so "unique" must hold them within δ, or within the radius).
    """
    v = result.verdict
    msg = result.message
    ok = fits(generator, result.z, x, result, mask)
    assert v.success == ok, f"verdict {v.value} but onnxruntime says fits={ok}: {msg}"
    assert result.reproduces == ok, msg
    if result.reconstruction is not None:
        np.testing.assert_allclose(result.reconstruction, generator.run_onnx(result.z), rtol=1e-6, atol=1e-9)
    kind = result.evidence.kind
    delta = distance * max(1.0, float(np.max(np.abs(result.z))))
    if v is Verdict.NOT_UNIQUE:
        assert kind in WITNESSES, msg
        w = result.witness
        assert w is not None and np.all(np.isfinite(w)), msg
        assert float(np.max(np.abs(w - result.z))) >= delta * (1 - 1e-9), msg
        assert fits(generator, w, x, result, mask), f"the witness does not reproduce x: {msg}"
    elif v is Verdict.UNIQUE:
        if result.noise is None:
            assert kind in CERTIFICATES, msg
            for other in known:
                assert float(np.max(np.abs(np.asarray(other) - result.z))) <= max(
                    delta, 1e-4 * (1 + np.max(np.abs(other)))
                ), f"'unique' but a known preimage lies {np.max(np.abs(other - result.z)):.3g} away: {msg}"
        else:
            assert kind in RADII and result.radius is not None, msg
            for other in known:
                assert (
                    float(np.max(np.abs(np.asarray(other) - result.z))) <= result.radius * (1 + 1e-6) + 1e-9
                ), f"a known fitting latent lies outside the radius {result.radius:.3g}: {msg}"
    elif v is Verdict.NO_PREIMAGE:
        assert kind in REFUTATIONS, msg
        assert not in_range, f"'no preimage' for an observation the test made from a latent: {msg}"
    elif v is Verdict.FITS:
        assert kind is EvidenceKind.NONE, msg
    else:
        assert v is Verdict.NOT_FOUND and kind is EvidenceKind.NONE, msg
