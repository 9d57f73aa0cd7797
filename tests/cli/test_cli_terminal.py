"""Names from a model file never reach the terminal raw: escape sequences (window title, clear screen)
and CR/LF (a forged "Error:" line) are shown escaped, in text output and in error paragraphs alike."""

from __future__ import annotations

import json

import numpy as np
from builders import init, model, node, rng_weights, save
from cli_helpers import run

from onnxinv.report import escape_name, escape_text

TITLE = "\x1b]0;owned\x07"  # sets the terminal's window title
CLEAR = "\x1b[2J\x1b[H"  # clears the screen
FORGED = "\r\nError: forged line"


def _hostile_names_model(folder, unsupported: bool = False):
    op = "Softplus" if unsupported else "Relu"
    nodes = [
        node("Gemm", ["z", "W1", "b1"], ["a"], name=f"dense{TITLE}{FORGED}", transB=1),
        node(op, ["a"], ["x"], name=f"act{CLEAR}{FORGED}"),
    ]
    m = model(nodes, [init("W1", rng_weights(1, 12, 4)), init("b1", rng_weights(2, 12))])
    m.producer_name = f"exporter{TITLE}{CLEAR}"
    m.producer_version = "\u202eevil"  # right-to-left override
    return save(m, folder, "unsupported.onnx" if unsupported else "names.onnx")


def _assert_safe(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text and "\u202e" not in text, repr(text)
    assert not any(line.startswith("Error: forged") for line in text.splitlines()), text


def test_escape_name_and_text():
    assert escape_name("a\x1b[2Jb\r\n\tc\x7f\x9b\u202e") == "a\\x1b[2Jb\\r\\n\\tc\\x7f\\x9b\\u202e"
    assert escape_name("plain name/with:punctuation é") == "plain name/with:punctuation é"
    assert escape_text("line one\nline\x1b two") == "line one\nline\\x1b two"
    assert escape_text("a\nb", names=["x\ny"]) == "a\nb"
    assert escape_text("node 'x\ny' failed", names=["x\ny"]) == "node 'x\\ny' failed"


def test_inspect_escapes_producer_and_node_names(tmp_path):
    path = _hostile_names_model(tmp_path)
    result = run("inspect", path)
    assert result.exit_code == 0, result.stderr
    _assert_safe(result.stdout)
    assert "exporter\\x1b]0;owned\\x07" in result.stdout
    assert "dense\\x1b]0;owned\\x07\\r\\nError: forged line" in result.stdout
    # JSON keeps the real names (JSON escapes control characters itself)
    document = json.loads(run("inspect", path, "--json").stdout)
    assert document["producer"].startswith(f"exporter{TITLE}{CLEAR}")
    assert document["layers"][0]["source_nodes"][0] == f"dense{TITLE}{FORGED}"


def test_error_paragraph_escapes_node_names(tmp_path):
    path = _hostile_names_model(tmp_path, unsupported=True)
    np.save(tmp_path / "x.npy", np.zeros(12, np.float32))
    result = run("invert", path, tmp_path / "x.npy", "-o", tmp_path / "z.npy")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ")
    _assert_safe(result.stderr)
    assert "act\\x1b[2J\\x1b[H\\r\\nError: forged line" in result.stderr


def test_audit_report_escapes_node_names(tmp_path):
    for path in (_hostile_names_model(tmp_path), _hostile_names_model(tmp_path, unsupported=True)):
        result = run("audit", path, "--samples", "2")
        assert result.exit_code in (0, 3), result.stderr
        _assert_safe(result.stdout)
        _assert_safe(result.stderr)
