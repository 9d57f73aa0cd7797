"""``python -m onnxinv``: the same command line as the ``onnxinv`` console script."""

from onnxinv.cli import main

if __name__ == "__main__":
    main(prog_name="onnxinv")
