"""The package's public surface: the names ``onnxinv`` exports, and the PEP 561 marker of its type hints."""

import importlib.metadata
import importlib.resources

import pytest

import onnxinv
from onnxinv.inversion import framework, registry, result


def test_exports_are_the_real_objects():
    assert onnxinv.Settings is framework.Settings
    assert onnxinv.SolverStatus is result.SolverStatus
    assert onnxinv.Method is framework.Method
    assert onnxinv.METHODS is registry.METHODS
    assert onnxinv.get_method is registry.get_method
    for name in ("Settings", "SolverStatus", "Method", "METHODS", "get_method"):
        assert name in onnxinv.__all__


def test_all_names_exist():
    missing = [name for name in onnxinv.__all__ if not hasattr(onnxinv, name)]
    assert missing == []
    assert len(set(onnxinv.__all__)) == len(onnxinv.__all__)


def test_registry_through_the_top_level_names():
    record = onnxinv.get_method("exact")
    assert isinstance(record, onnxinv.Method)
    assert onnxinv.METHODS["exact"] is record
    assert onnxinv.Settings().time_limit > 0
    assert onnxinv.SolverStatus("optimal") is onnxinv.SolverStatus.OPTIMAL
    with pytest.raises(onnxinv.InvalidArgumentError, match="unknown method 'nope'; choose one of"):
        onnxinv.get_method("nope")


def test_py_typed_ships_with_the_package():
    marker = importlib.resources.files("onnxinv") / "py.typed"
    assert marker.is_file()


def test_py_typed_is_installed_with_the_package():
    """The marker is package data of the distribution (pyproject package-data), not only a file of the
    source tree: it is in the installed distribution's file list."""
    files = importlib.metadata.files("onnxinv") or []
    names = {f.as_posix() for f in files}
    if "onnxinv/__init__.py" not in names:
        pytest.skip("this installation of onnxinv lists no package files")
    assert "onnxinv/py.typed" in names
