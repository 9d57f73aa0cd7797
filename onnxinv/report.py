"""Plain-text and JSON views of onnxinv's results, shared by the command line and notebooks.

Nothing here computes anything: each function turns a result object into lines of text or into a
JSON-ready dict.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import PurePath
from typing import Any

import numpy as np

from onnxinv.layers import Generator, TensorInfo
from onnxinv.loader import SelfCheck

__all__ = [
    "escape_name",
    "escape_text",
    "format_generator",
    "format_table",
    "generator_to_dict",
    "jsonable",
    "to_json",
    "verdict_text",
]


# Characters that change what a terminal shows rather than showing themselves: C0 controls (ESC starts
# title / clear-screen sequences, CR and LF can forge lines), DEL, C1 controls (0x9b is a one-byte CSI),
# and the bidirectional overrides and isolates that reorder text ("Trojan source").
_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_UNSAFE = {
    **{code: _escape_char(chr(code)) for code in [*range(0x20), *range(0x7F, 0xA0)]},
    **{ord(ch): _escape_char(ch) for ch in _BIDI},
}
_UNSAFE_BUT_NEWLINE = {code: text for code, text in _UNSAFE.items() if code != ord("\n")}


def escape_name(name: object) -> str:
    """``name`` with every control character shown as a Python-style escape (``\\x1b``, ``\\n``).

    For names and other single-line strings that come from a model file (node and tensor names, the
    producer): printed raw, they could set the terminal's title, clear the screen or forge a line.
    """
    return str(name).translate(_UNSAFE)


def escape_text(text: object, names: Iterable[str] = ()) -> str:
    """Multi-line ``text`` safe for a terminal: line breaks kept, every other control character escaped.

    ``names`` are strings from the model file that ``text`` may contain; each one holding a control
    character is replaced by its :func:`escape_name` form first, so a line break inside a name is shown
    as ``\\n`` instead of starting a new line.
    """
    text = str(text)
    for name in sorted({n for n in names if isinstance(n, str)}, key=len, reverse=True):
        if name and name != name.translate(_UNSAFE):
            text = text.replace(name, escape_name(name))
    return text.translate(_UNSAFE_BUT_NEWLINE)


def jsonable(value: Any) -> Any:
    """``value`` with numpy arrays and scalars, enums, paths and dataclass-like objects made JSON-ready.

    Non-finite floats become None (JSON has no NaN or infinity).
    """
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, dict):
        return {str(jsonable(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "to_dict"):
        return jsonable(value.to_dict())
    return value


def to_json(document: Any) -> str:
    """One JSON document, indented, with keys in the order they were built."""
    return json.dumps(jsonable(document), indent=2, allow_nan=False)


def verdict_text(verdict: Any) -> str:
    """A verdict enum (or string) as the words users read: "unique", "not unique", "not found"."""
    return str(verdict.value if isinstance(verdict, enum.Enum) else verdict)


def format_table(header: Sequence[str], rows: Iterable[Sequence[Any]], indent: str = "  ") -> list[str]:
    """Rows of cells padded into aligned columns (numbers right-aligned, text left-aligned).

    Cells are single-line: control characters in them are escaped (:func:`escape_name`).
    """
    text_rows = [[escape_name(c) for c in header]] + [[escape_name(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in text_rows) for i in range(len(header))]
    numeric = [
        all(_is_number(r[i]) for r in text_rows[1:]) and len(text_rows) > 1 for i in range(len(header))
    ]
    lines = []
    for row in text_rows:
        cells = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric)
        ]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("x%"))
    except ValueError:
        return False
    return True


def generator_to_dict(generator: Generator, self_check: SelfCheck | None = None) -> dict:
    """What ``onnxinv inspect --json`` prints: the model's interface, its layers and the self-check."""
    return {
        "path": generator.path,
        "producer": generator.producer,
        "opset": generator.opset,
        "input": _tensor_dict(generator.input),
        "inputs": [_input_dict(generator, info) for info in generator.inputs],
        "output": _tensor_dict(generator.output),
        "latent_dim": generator.latent_dim,
        "output_dim": generator.output_dim,
        "sample_input_shape": list(generator.sample_input_shape),
        "batch_size": generator.batch_size,
        "has_batch_dim": generator.has_batch_dim,
        "layers": [
            {
                "index": i,
                "in_features": layer.in_features,
                "out_features": layer.out_features,
                "expansion": layer.expansion,
                "activation": layer.activation.value,
                "slope": layer.slope,
                "source_nodes": list(layer.source_nodes),
            }
            for i, layer in enumerate(generator.layers)
        ],
        "notes": list(generator.notes),
        "self_check": None if self_check is None else self_check.to_dict(),
    }


def _tensor_dict(info: TensorInfo) -> dict[str, Any]:
    return {"name": info.name, "shape": list(info.shape), "dtype": info.dtype}


_SHOWN_VALUES = 8  # a fixed value with at most this many entries is shown in full


def _input_dict(generator: Generator, info: TensorInfo) -> dict[str, Any]:
    entry = _tensor_dict(info)
    if info.name == generator.input.name:
        entry["role"] = "latent"
    else:
        value = generator.fixed[info.name]
        entry["role"] = "fixed"
        entry["value_shape"] = list(value.shape)
        entry["value"] = value.tolist() if value.size <= _SHOWN_VALUES else None
    return entry


def _fixed_text(value: np.ndarray) -> str:
    if value.size <= _SHOWN_VALUES:
        shown = np.array2string(value.reshape(-1), separator=", ", precision=4)
    elif value.dtype.kind == "f":
        shown = f"{value.size} values in [{value.min():.4g}, {value.max():.4g}]"
    else:
        shown = f"{value.size} values in [{value.min()}, {value.max()}]"
    return f"fixed to {shown} (shape {tuple(value.shape)})"


def format_generator(generator: Generator, self_check: SelfCheck | None = None) -> list[str]:
    """What ``onnxinv inspect`` prints; every string from the model file is escaped (:func:`escape_name`)."""
    producer = escape_name(generator.producer or "unknown producer")
    lines = [
        escape_name(generator.path or "(generator built in code)"),
        f"  producer    {producer}, opset {generator.opset or '?'}",
        f"  input       {escape_name(generator.input.describe())}  (latent: {generator.latent_dim} values)",
    ]
    for info in generator.inputs:
        if info.name != generator.input.name:
            lines.append(
                f"  input       {escape_name(info.describe())}  ({_fixed_text(generator.fixed[info.name])})"
            )
    lines += [
        f"  output      {escape_name(generator.output.describe())}  ({generator.output_dim} values)",
    ]
    batch = "any" if generator.batch_size is None else str(generator.batch_size)
    if not generator.has_batch_dim:
        batch = "none (one latent per run)"
    lines.append(f"  batch size  {batch}")
    lines.append(f"  layers      {len(generator.layers)}")
    rows = [
        (
            i,
            f"{layer.in_features} -> {layer.out_features}",
            f"{layer.expansion:.2f}x",
            layer.describe_activation(),
            ", ".join(layer.source_nodes) or "-",
        )
        for i, layer in enumerate(generator.layers)
    ]
    lines += format_table(("#", "in -> out", "expansion", "activation", "source nodes"), rows, "    ")
    if generator.notes:
        lines.append("  notes")
        lines += [f"    - {escape_name(note)}" for note in generator.notes]
    else:
        lines.append("  notes       none")
    if self_check is None:
        lines.append("  self-check  skipped (--no-self-check)")
    else:
        lines.append(f"  self-check  {escape_name(self_check.describe())}")
    return lines
