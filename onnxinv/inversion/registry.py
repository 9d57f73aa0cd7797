"""The inversion methods: one :class:`~onnxinv.inversion.framework.Method` record each, in one place.

The CLI's ``--method`` choices and help, ``auto``, :mod:`onnxinv.audit` and the scripts read this
registry; a new method is one module exporting ``METHOD`` plus one line here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from onnxinv.errors import InvalidArgumentError
from onnxinv.inversion import auto, exact, gd, l1, linf, lsq, relaxed, search, sparse
from onnxinv.inversion.framework import Method

__all__ = ["METHODS", "get_method"]

METHODS: Mapping[str, Method] = MappingProxyType(
    {
        m.name: m
        for m in (
            auto.METHOD,
            exact.METHOD,
            sparse.METHOD,
            linf.METHOD,
            l1.METHOD,
            relaxed.METHOD,
            lsq.METHOD,
            search.METHOD,
            gd.METHOD,
        )
    }
)


def get_method(name: object) -> Method:
    """The record of method ``name``; InvalidArgumentError naming the choices otherwise."""
    if not isinstance(name, str) or name not in METHODS:
        raise InvalidArgumentError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]
