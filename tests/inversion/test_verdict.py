"""The verdict contract as a rule (onnxinv.inversion.verdict.decide), with hand-made evidence."""

from __future__ import annotations

import numpy as np
import pytest

from onnxinv.inversion.verdict import Evidence, EvidenceKind, FitCheck, Reason, Verdict, decide

CLEAN_FIT = FitCheck(True, 1e-7, 1e-7, 1e-7, 1e-5, "relative l2")
CLEAN_MISS = FitCheck(False, 0.2, 0.3, 0.1, 1e-5, "relative l2")
NOISY_FIT = FitCheck(True, 1e-3, 1e-3, 1e-3, 2e-3, "max abs", 2e-3, "bounded")
CERT = Evidence(EvidenceKind.LAYERWISE, "Theorem 2 holds.")
MILP = Evidence(EvidenceKind.MILP, "the MILP bounds every other preimage within δ.", box=10.0)
WITNESS = Evidence(EvidenceKind.WITNESS, "z' reproduces x.", witness=np.ones(3), distance=1.0)
RADIUS = Evidence(EvidenceKind.STABILITY, "every fitting latent is close.", radius=0.3)
REFUTE = Evidence(EvidenceKind.LAYER_LP, "the last layer's LP is infeasible.", layer=2)
NOTE = Evidence(EvidenceKind.NONE, "witness search: nothing")


@pytest.mark.parametrize(
    "fit,evidence,noisy,verdict,reason",
    [
        (CLEAN_FIT, (CERT,), False, Verdict.UNIQUE, Reason.CERTIFIED_LAYERWISE),
        (CLEAN_FIT, (MILP,), False, Verdict.UNIQUE, Reason.CERTIFIED_MILP),
        (CLEAN_FIT, (WITNESS,), False, Verdict.NOT_UNIQUE, Reason.WITNESS),
        (CLEAN_FIT, (NOTE,), False, Verdict.FITS, Reason.UNDECIDED),
        (CLEAN_FIT, (), False, Verdict.FITS, Reason.UNDECIDED),
        (CLEAN_FIT, (WITNESS, CERT), False, Verdict.UNIQUE, Reason.CERTIFIED_LAYERWISE),
        # a reproducing z beats a refutation: the onnxruntime check wins
        (CLEAN_FIT, (REFUTE,), False, Verdict.FITS, Reason.UNDECIDED),
        (NOISY_FIT, (RADIUS,), True, Verdict.UNIQUE, Reason.STABLE_RADIUS),
        # noisy: a certificate or a witness of the clean kind proves nothing about the fitting set
        (NOISY_FIT, (CERT, WITNESS), True, Verdict.FITS, Reason.UNDECIDED),
        (CLEAN_MISS, (REFUTE,), False, Verdict.NO_PREIMAGE, Reason.INFEASIBLE_LAYER),
        # without a fit, certificates, radii and witnesses are worth nothing
        (CLEAN_MISS, (CERT, RADIUS, WITNESS, NOTE), False, Verdict.NOT_FOUND, Reason.NO_FIT),
    ],
)
def test_decide(fit, evidence, noisy, verdict, reason) -> None:
    d = decide(fit, evidence, noisy=noisy)
    assert d.verdict is verdict and d.reason is reason
    assert d.verdict.success is fit.reproduces
    assert d.message.startswith(verdict.value.capitalize().split()[0])
    assert d.considered == evidence


def test_messages_carry_the_evidence_and_the_notes() -> None:
    assert "within radius 0.3" in decide(NOISY_FIT, (RADIUS,), noisy=True).message
    assert "witness search: nothing" in decide(CLEAN_FIT, (NOTE,)).message
    assert "the last layer's LP is infeasible." in decide(CLEAN_MISS, (REFUTE,)).message
    assert "nothing was proved" in decide(CLEAN_MISS, ()).message


def test_to_dict_is_plain_data() -> None:
    d = WITNESS.to_dict()
    assert d["kind"] == "witness" and d["witness"] == [1.0, 1.0, 1.0] and d["radius"] is None
    assert CLEAN_FIT.to_dict()["criterion"] == "relative l2"
