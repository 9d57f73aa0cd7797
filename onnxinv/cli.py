"""The ``onnxinv`` command line: parse arguments, call the public API, format the answer.

No algorithm lives here. Errors raised on purpose (:class:`~onnxinv.errors.OnnxInvError`) are caught in
one place, :meth:`_Group.invoke`, and printed as one paragraph; anything else is an internal error.
"""

from __future__ import annotations

import inspect as pyinspect
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

import click
import numpy as np

from onnxinv import __version__
from onnxinv.errors import ObservationError, OnnxInvError
from onnxinv.inversion import METHODS as INVERSION_METHODS

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NEGATIVE = 3

EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  error: the command could not run (unreadable or unsupported model, bad
     observation file, solver failure); one paragraph on stderr says what,
     where and why (--debug adds the traceback)
  2  usage error (unknown option, missing argument, file that does not exist)
  3  the command ran but the answer is negative: verify found a residual above
     the tolerance, invert found no preimage for some observation, audit found
     the model not invertible at some sampled point, inspect's self-check failed
"""

PNG_MAX_ROWS = 32  # --png draws at most this many observations, one row each
METHODS = tuple(INVERSION_METHODS)
_EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_OUTPUT_FILE = click.Path(dir_okay=False, writable=False, path_type=Path)


class _Group(click.Group):
    """A group that turns onnxinv's own errors into one paragraph and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except OnnxInvError as exc:
            _report_error(ctx, f"Error: {exc}", exc)
        except Exception as exc:
            _report_error(
                ctx,
                f"Error: internal error in onnxinv ({type(exc).__name__}: {_first_line(exc)}). This is a bug, "
                "not a problem with your files; rerun with --debug for the traceback and report it.",
                exc,
            )


def _report_error(ctx: click.Context, message: str, exc: BaseException) -> NoReturn:
    if ctx.params.get("debug"):
        click.echo("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), err=True, nl=False)
    click.echo(message, err=True)
    ctx.exit(EXIT_ERROR)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "no message"


def _echo_json(document: Any) -> None:
    from onnxinv.report import to_json

    click.echo(to_json(document))


def _parse_fix(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Path]:
    """``("y=Y.npy", ...)`` -> ``{"y": Path("Y.npy")}``; a usage error for a malformed or missing file."""
    parsed: dict[str, Path] = {}
    for value in values:
        name, sep, file = value.partition("=")
        if not sep or not name or not file:
            raise click.BadParameter(f"'{value}' is not NAME=FILE.npy", ctx=ctx, param=param)
        if name in parsed:
            raise click.BadParameter(f"input '{name}' is fixed twice", ctx=ctx, param=param)
        path = Path(file)
        if not path.is_file():
            raise click.BadParameter(f"file '{file}' for input '{name}' does not exist", ctx=ctx, param=param)
        parsed[name] = path
    return parsed


def model_inputs(command):
    """The options every command that reads a model shares: ``--fix NAME=FILE.npy`` and ``--latent NAME``.

    They reach :func:`onnxinv.load` unchanged (as ``fixed=`` and ``latent=``).
    """
    command = click.option(
        "--latent",
        metavar="NAME",
        default=None,
        help="The graph input to invert, when the model has several and it is ambiguous.",
    )(command)
    return click.option(
        "--fix",
        metavar="NAME=FILE.npy",
        multiple=True,
        callback=_parse_fix,
        help="Hold graph input NAME fixed at the array in FILE (.npy / .npz): a class label, a "
        "conditioning vector; one sample's value, repeated for every latent. Repeatable.",
    )(command)


def _load(model: Path, fix: dict[str, Path], latent: str | None, self_check: bool = True):
    from onnxinv import files
    from onnxinv.loader import load

    return load(model, self_check=self_check, fixed=files.read_fixed_inputs(fix), latent=latent)


@click.group(cls=_Group, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the full traceback when a command fails.")
@click.version_option(__version__, "--version", prog_name="onnxinv")
def main(debug: bool) -> None:
    """Invert dense generative models stored as ONNX files, layer by layer, and say whether the
    latent is unique.

    \b
    onnxinv inspect MODEL            what the parser read, and a self-check
    onnxinv invert MODEL OBS         find z with G(z) = OBS; writes z to a .npy
    onnxinv verify MODEL Z OBS       residual of G(z) against OBS (onnxruntime)
    onnxinv audit MODEL              can latents be recovered, and which layer is to blame
    """


# --------------------------------------------------------------------------------------------------
# inspect


@main.command(epilog=EXIT_CODES_HELP, short_help="Show the layers read from MODEL and the self-check.")
@click.argument("model", type=_EXISTING_FILE)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")
@click.option(
    "--no-self-check", is_flag=True, help="Skip comparing the layer list with onnxruntime on random latents."
)
@model_inputs
def inspect(
    model: Path, as_json: bool, no_self_check: bool, fix: dict[str, Path], latent: str | None
) -> None:
    """Show the layers onnxinv reads from MODEL, its input and output, and the self-check.

    Each layer is listed with its size (in -> out), expansion factor (out / in), activation and the
    ONNX nodes it was built from. The self-check runs random latents through both the layer list and
    onnxruntime; exit code 3 when they disagree.
    """
    from onnxinv.loader import check_generator
    from onnxinv.report import format_generator, generator_to_dict

    generator = _load(model, fix, latent, self_check=False)
    check = None if no_self_check else check_generator(generator)
    if as_json:
        _echo_json(generator_to_dict(generator, check))
    else:
        click.echo("\n".join(format_generator(generator, check)))
    if check is not None and not check.passed:
        click.get_current_context().exit(EXIT_NEGATIVE)


# --------------------------------------------------------------------------------------------------
# invert


@main.command(epilog=EXIT_CODES_HELP, short_help="Find z with G(z) = OBS and say whether it is unique.")
@click.argument("model", type=_EXISTING_FILE)
@click.argument("obs", type=_EXISTING_FILE)
@click.option(
    "-o",
    "--output",
    type=_OUTPUT_FILE,
    help="Where to write z (.npy, float32). Default: <OBS stem>.z.npy in the current folder.",
)
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="auto",
    show_default=True,
    help="Inversion method: exact (realizable case, certifies uniqueness), linf / l1 / relaxed "
    "(noisy, LPs of Lei et al. 2019), sparse (layered basis pursuit), gd (gradient descent baseline), "
    "auto (pick by the observation).",
)
@click.option(
    "--noise", type=click.FloatRange(min=0.0), default=None, help="Noise level EPS the observation may carry."
)
@click.option(
    "--mask",
    type=_EXISTING_FILE,
    default=None,
    help=".npy / .npz with one boolean (or 0/1) per model output; True = observed.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of the summary.")
@click.option(
    "--png",
    type=_OUTPUT_FILE,
    default=None,
    help="Write observation | reconstruction | difference side by side, one row per observation (at most "
    f"{PNG_MAX_ROWS}); image-shaped outputs only.",
)
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress bar and no per-observation lines; totals only."
)
@model_inputs
def invert(
    model: Path,
    obs: Path,
    output: Path | None,
    method: str,
    noise: float | None,
    mask: Path | None,
    as_json: bool,
    png: Path | None,
    quiet: bool,
    fix: dict[str, Path],
    latent: str | None,
) -> None:
    """Find z with G(z) = OBS for the generator in MODEL and say whether z is unique.

    OBS is a .npy file, a .npz file holding one array, or a PNG image when the model's output is
    image-shaped. It holds one observation (the model's output size, with or without batch and
    channel dims) or a batch (N, ...). z is written as (k,) for one observation or (N, k) for a batch,
    float32; the file is written only when the whole run succeeds.

    Exit code 3 when some observation has no preimage (verdict "not found").
    """
    from onnxinv import files
    from onnxinv.inversion import Verdict

    generator = _load(model, fix, latent)
    layout = None
    if png is not None:
        layout = files.image_layout(generator)
        if layout is None:
            raise ObservationError(
                f"--png {png}: the model's output {generator.output.describe()} is not image-shaped, so "
                "there is no picture to draw; leave out --png."
            )
    observations = files.read_observations(obs, generator, require_finite=mask is None)
    mask_values = None
    if mask is not None:
        mask_values = files.read_mask(mask, generator.output_dim, observations.count)
        files.check_observed_finite(observations, mask_values)
    output = output if output is not None else Path.cwd() / f"{obs.stem}.z.npy"
    for target in (output, png):
        if target is not None and not target.resolve().parent.is_dir():
            raise OnnxInvError(
                f"{target}: the folder '{target.parent}' does not exist, so the result could not be written "
                "there. Create it or choose another output path."
            )

    show_progress = not quiet and not as_json and not observations.single and _is_terminal(sys.stderr)
    started = time.perf_counter()
    results = _invert_rows(generator, observations, method, noise, mask_values, show_progress)
    seconds = time.perf_counter() - started

    z = np.stack([r.z for r in results]).astype(np.float32)
    if observations.single:
        z = z[0]
    png_bytes = None
    if layout is not None:
        shown = min(len(results), PNG_MAX_ROWS)
        reconstruction = generator.run_onnx(np.stack([r.z for r in results[:shown]]))
        png_bytes = _comparison_png(layout, observations.values[:shown], reconstruction)
    files.save_npy(output, z)
    if png_bytes is not None:
        with files.atomic_write(png) as handle:
            handle.write(png_bytes)

    counts = {v.value: sum(r.verdict is v for r in results) for v in Verdict}
    if as_json:
        _echo_json(
            {
                "model": str(model),
                "observations": str(obs),
                "output": str(output),
                "png": None if png is None else str(png),
                "single": observations.single,
                "count": len(results),
                "z_shape": list(z.shape),
                "verdicts": counts,
                "seconds": seconds,
                "results": [r.to_dict() for r in results],
            }
        )
    else:
        _print_invert_summary(results, observations.single, counts, seconds, output, z, png, quiet)
    if counts[Verdict.NOT_FOUND.value]:
        click.get_current_context().exit(EXIT_NEGATIVE)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _invert_rows(generator, observations, method, noise, mask, show_progress) -> list:
    """Invert every row, behind a progress bar on stderr when one is shown.

    The bar advances through the API's ``progress`` callback when ``invert`` has one, else the batch is
    inverted in about 50 chunks.
    """
    from onnxinv.inversion import invert

    kwargs: dict[str, Any] = {"method": method, "noise": noise}
    rows = observations.values
    if observations.single:
        return [invert(generator, rows[0], mask=mask, batch=False, **kwargs)]
    if not show_progress:
        return list(invert(generator, rows, mask=mask, batch=True, **kwargs).results)
    results: list = []
    with click.progressbar(length=rows.shape[0], label="inverting", file=sys.stderr, show_pos=True) as bar:
        if "progress" in pyinspect.signature(invert).parameters:  # the API reports finished observations
            batch = invert(generator, rows, mask=mask, batch=True, progress=bar.update, **kwargs)
            return list(batch.results)
        chunk = max(1, math.ceil(rows.shape[0] / 50))
        for start in range(0, rows.shape[0], chunk):
            part = rows[start : start + chunk]
            part_mask = mask[start : start + chunk] if mask is not None and mask.ndim == 2 else mask
            results.extend(invert(generator, part, mask=part_mask, batch=True, **kwargs).results)
            bar.update(part.shape[0])
    return results


def _comparison_png(layout, observations: np.ndarray, reconstruction: np.ndarray) -> bytes:
    from onnxinv import files

    return files.encode_png(files.comparison_pixels(layout, observations, reconstruction))


def _print_invert_summary(results, single, counts, seconds, output, z, png, quiet) -> None:
    from onnxinv.report import format_table, verdict_text

    if single:
        (r,) = results
        lines = [
            f"method    {r.method}"
            + (f" (asked: {r.requested})" if r.requested and r.requested != r.method else ""),
            f"verdict   {verdict_text(r.verdict)}",
            f"residual  {r.residual_rel_l2:.2e} relative l2, {r.residual_linf:.2e} max abs (onnxruntime)",
            f"time      {r.seconds:.3f} s",
        ]
        if not quiet and r.message:
            lines.append(f"note      {r.message}")
    else:
        lines = []
        if not quiet:
            rows = [
                (i, r.method, verdict_text(r.verdict), f"{r.residual_rel_l2:.2e}", f"{r.seconds:.3f}")
                for i, r in enumerate(results)
            ]
            lines += format_table(("#", "method", "verdict", "rel. residual", "seconds"), rows, "")
        residuals = np.array([r.residual_rel_l2 for r in results], dtype=np.float64)
        summary = ", ".join(f"{n} {name}" for name, n in counts.items())
        lines.append(f"{len(results)} observations: {summary}")
        lines.append(
            f"relative residual: median {np.median(residuals):.2e}, max {np.max(residuals):.2e}; "
            f"{seconds:.2f} s in all"
        )
    lines.append(f"z         written to {output} {tuple(z.shape)} float32")
    if png is not None:
        more = (
            f" (the first {PNG_MAX_ROWS} of {len(results)} observations)"
            if len(results) > PNG_MAX_ROWS
            else ""
        )
        lines.append(f"png       written to {png}{more}")
    click.echo("\n".join(lines))


# --------------------------------------------------------------------------------------------------
# verify


@main.command(epilog=EXIT_CODES_HELP, short_help="Residual of G(z) against OBS, through onnxruntime.")
@click.argument("model", type=_EXISTING_FILE)
@click.argument("z", type=_EXISTING_FILE)
@click.argument("obs", type=_EXISTING_FILE)
@click.option(
    "--tol",
    type=click.FloatRange(min=0.0),
    default=1e-3,
    show_default=True,
    help="Largest relative l2 residual ||G(z) - x|| / ||x|| that counts as a fit.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")
@model_inputs
def verify(
    model: Path, z: Path, obs: Path, tol: float, as_json: bool, fix: dict[str, Path], latent: str | None
) -> None:
    """Run the latents in Z through MODEL with onnxruntime and compare with the observations OBS.

    Z is a .npy / .npz file with one latent (k,) or a batch (N, k); OBS is read as for `invert`.
    Reports the relative l2 and the max abs residual; exit code 3 when some residual is above --tol.
    """
    from onnxinv import files
    from onnxinv.verify import verify as run_verify

    generator = _load(model, fix, latent)
    latents, z_single = files.read_latents(z, generator.latent_dim)
    observations = files.read_observations(obs, generator)
    result = run_verify(
        generator,
        latents[0] if z_single else latents,
        observations.values[0] if observations.single else observations.values,
        tol=tol,
    )
    if as_json:
        _echo_json({"model": str(model), "latents": str(z), "observations": str(obs), **result.to_dict()})
    else:
        click.echo(result.describe())
    if not result.passed:
        click.get_current_context().exit(EXIT_NEGATIVE)


# --------------------------------------------------------------------------------------------------
# audit


@main.command(epilog=EXIT_CODES_HELP, short_help="Can latents be recovered, and which layer is to blame?")
@click.argument("model", type=_EXISTING_FILE)
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="How many latents to draw from N(0, I) (ignored with --obs).",
)
@click.option(
    "--obs",
    type=_EXISTING_FILE,
    default=None,
    help="Audit at real observations instead (.npy / .npz / .png, inverted first).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampled latents.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of the report.")
@model_inputs
def audit(
    model: Path,
    samples: int,
    obs: Path | None,
    seed: int,
    as_json: bool,
    fix: dict[str, Path],
    latent: str | None,
) -> None:
    """Can the latent codes of MODEL be recovered, and which layer is to blame if not?

    Lists, per layer, its size, expansion, activation and rank; at sampled latents (or at the real
    observations of --obs) the active rows, how often the layer is identifiable, the cardinality
    growth and mutual-coherence conditions, and a real inversion of every sample. Unsupported graphs
    are reported with every refused node. Exit code 3 unless the model is invertible at every sampled
    point.
    """
    from onnxinv.audit import audit as run_audit

    # With --fix / --latent the model is loaded here (audit takes a loaded generator); an unreadable graph
    # is then an error listing every refused node rather than an "unsupported" report.
    source = _load(model, fix, latent) if fix or latent else model
    report = run_audit(source, samples=samples, observations=obs, seed=seed)
    if as_json:
        _echo_json(report.to_dict())
    else:
        click.echo(report.describe())
    if not report.invertible:
        click.get_current_context().exit(EXIT_NEGATIVE)


if __name__ == "__main__":  # pragma: no cover
    main()
