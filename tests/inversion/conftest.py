"""Fixtures for the inversion tests; helpers live in inversion_helpers.py."""

from __future__ import annotations

import pytest
from inversion_helpers import make_generator

from onnxinv.layers import Generator


@pytest.fixture
def relu_20_100_500() -> Generator:
    return make_generator([20, 100, 500], seed=1)
