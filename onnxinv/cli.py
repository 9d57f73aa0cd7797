"""The ``onnxinv`` command line: parse arguments, call the public API, format the answer.

No algorithm lives here. Errors raised on purpose (:class:`~onnxinv.errors.OnnxInvError`) are caught in
one place, :meth:`_Group.invoke`, and printed as one paragraph; anything else is an internal error.

What reaches the terminal: stdout holds only what the command prints (with ``--json``, one JSON
document): while a command runs, anything native code writes to file descriptor 1 (HiGHS, onnxruntime)
goes to stderr instead. stderr holds only our paragraph: Python warnings and onnxruntime's log lines are
silenced (``--debug`` shows warnings and the traceback). Every text we print has its control characters
escaped (:func:`onnxinv.report.escape_text`), so names from a model file cannot move the cursor, set the
terminal's title or forge a line.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, TypeVar, cast

import click
import numpy as np

from onnxinv import __version__
from onnxinv.errors import ObservationError, OnnxInvError
from onnxinv.inversion import METHODS as INVERSION_METHODS
from onnxinv.inversion.framework import NOISE_MODELS

if TYPE_CHECKING:  # the commands import these lazily, to keep `onnxinv --help` fast
    from onnxinv.files import ImageLayout, Observations
    from onnxinv.inversion import InversionResult, Settings
    from onnxinv.layers import Generator, Weight

_Command = TypeVar("_Command", bound=Callable[..., Any])

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
     the tolerance, invert's verdict was "no preimage" or "not found" for some
     observation (onnxruntime did not confirm a fit), audit found the model not
     invertible at some sampled point, inspect's self-check failed
  130, 143  interrupted by Ctrl-C or SIGTERM: workers stopped, nothing written
     (invert --out-dir keeps its finished chunks; rerun it to resume)
"""

PNG_MAX_ROWS = 32  # --png draws at most this many observations, one row each
METHODS = tuple(INVERSION_METHODS)
_EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_OUTPUT_FILE = click.Path(dir_okay=False, writable=False, path_type=Path)


SEED_MAX = 2**63 - 1


class _Positive(click.ParamType):
    """A positive, finite number (of ``unit``)."""

    def __init__(self, unit: str) -> None:
        self.name = unit
        self.unit = unit

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number ({self.unit}).", param, ctx)
        if not (math.isfinite(number) and number > 0):
            self.fail(f"{value!r} is not a positive, finite number ({self.unit}).", param, ctx)
        return number


def _whole_network_options(per: str) -> Callable[[_Command], _Command]:
    """``--milp-time`` and ``--latent-box`` (Settings.milp_time / latent_box), for invert and audit."""

    def decorate(f: _Command) -> _Command:
        f = click.option(
            "--latent-box",
            type=_Positive("half-width"),
            default=None,
            help="Assume max |z_i| <= this: whole-network (MILP) claims that hold inside the box then "
            "count, and say so (default: only claims about every latent count).",
        )(f)
        return click.option(
            "--milp-time",
            type=_Positive("seconds"),
            default=20.0,
            show_default=True,
            help=f"Seconds the whole-network MILP may take per use and {per} where the layer-wise argument "
            "runs out.",
        )(f)

    return decorate


class _Group(click.Group):
    """A group that turns onnxinv's own errors into one paragraph and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug"))
        with _stdout_for_documents_only(), warnings.catch_warnings():
            if not debug:  # numpy / onnx RuntimeWarnings would reach stderr ahead of our paragraph
                warnings.simplefilter("ignore")
                # worker processes started with "spawn" (not Linux) read their filters from here
                os.environ.setdefault("PYTHONWARNINGS", "ignore")
            _quiet_onnxruntime()
            try:
                with _signals_as_exceptions():
                    return super().invoke(ctx)
            except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
                raise
            except (KeyboardInterrupt, _interrupted()) as exc:
                _stop_after_signal(ctx, exc)
            except OnnxInvError as exc:
                names = [n for p in getattr(exc, "problems", ()) for n in (p.node, p.op)]
                _report_error(ctx, f"Error: {exc}", exc, names)
            except Exception as exc:
                _report_error(
                    ctx,
                    f"Error: internal error in onnxinv ({type(exc).__name__}: {_first_line(exc)}). This is a "
                    "bug, not a problem with your files; rerun with --debug for the traceback and report it.",
                    exc,
                )


def _quiet_onnxruntime() -> None:
    """onnxruntime's process-wide logger at FATAL only; its errors reach us as exceptions."""
    with contextlib.suppress(Exception):
        import onnxruntime

        onnxruntime.set_default_logger_severity(4)
        onnxruntime.disable_telemetry_events()


# --------------------------------------------------------------------------------------------------
# Signals: SIGTERM and Ctrl-C stop the run at once, remove temporaries, write nothing, exit 143 / 130


def _interrupted() -> type[BaseException]:
    from onnxinv.inversion.parallel import Interrupted

    return Interrupted


@contextlib.contextmanager
def _signals_as_exceptions() -> Iterator[None]:
    """While a command runs, SIGTERM raises :class:`~onnxinv.inversion.parallel.Interrupted` in the main
    thread (SIGINT raises ``KeyboardInterrupt`` as always), so the work unwinds: pool workers are killed,
    Dask tasks cancelled, staged outputs discarded. Only the first signal interrupts; one that arrives
    while the run is already unwinding is ignored, so the cleanup is not cut short."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if fired:
            return
        fired.append(signum)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise _interrupted()(signum)

    saved = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError, OSError):
            saved[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, previous in saved.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signum, previous)


def _stop_after_signal(ctx: click.Context, exc: BaseException) -> NoReturn:
    import signal

    from onnxinv import files

    files.remove_pending()
    signum = getattr(exc, "signum", signal.SIGINT)
    name = signal.Signals(signum).name
    note = getattr(exc, "onnxinv_note", None) or "nothing was written"
    with contextlib.suppress(Exception):
        click.echo(_paragraph(f"onnxinv: interrupted by {name}; {note}."), err=True)
    ctx.exit(128 + int(signum))


@contextlib.contextmanager
def _stdout_for_documents_only() -> Iterator[None]:
    """While a command runs, send whatever native code writes to file descriptor 1 to stderr.

    HiGHS and onnxruntime write to the descriptor directly, past ``sys.stdout``; their lines would
    corrupt a JSON document on stdout. Python's ``sys.stdout`` is pointed at a duplicate of the real
    stdout, so what the command prints still goes there. Nothing changes when stdout is not a real
    file descriptor (as under ``click.testing.CliRunner``).
    """
    try:
        real_stdout = sys.stdout
        if real_stdout is None or real_stdout.fileno() != 1:
            raise OSError("stdout is not file descriptor 1")
        real_stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        yield
        return
    ours = io.TextIOWrapper(
        io.FileIO(saved, "w", closefd=False),
        encoding=real_stdout.encoding,
        errors=real_stdout.errors,
        line_buffering=bool(real_stdout.line_buffering),
    )
    os.dup2(2, 1)
    sys.stdout = ours
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            ours.flush()
        sys.stdout = real_stdout
        os.dup2(saved, 1)
        os.close(saved)


def _report_error(
    ctx: click.Context, message: str, exc: BaseException, names: Iterable[str] = ()
) -> NoReturn:
    from onnxinv.report import escape_text

    if ctx.params.get("debug"):
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        click.echo(escape_text(trace, names), err=True, nl=False)
    click.echo(_paragraph(message, names), err=True)
    ctx.exit(EXIT_ERROR)


def _paragraph(message: str, names: Iterable[str] = ()) -> str:
    """An error message safe for the terminal. Continuation lines of our own messages are indented
    (a list of refused nodes); any other line break can only come from a name in the model file, so it
    is shown escaped and no line of the paragraph can pass for one of ours."""
    from onnxinv.report import escape_text

    return re.sub(r"\n(?![ \t])", r"\\n", escape_text(message, names))


def _echo_text(text: str, names: Iterable[str] = ()) -> None:
    from onnxinv.report import escape_text

    click.echo(escape_text(text, names))


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


def model_inputs(command: _Command) -> _Command:
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


def _load(model: Path, fix: dict[str, Path], latent: str | None, self_check: bool = True) -> Generator:
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
        _echo_text("\n".join(format_generator(generator, check)))
    if check is not None and not check.passed:
        click.get_current_context().exit(EXIT_NEGATIVE)


# --------------------------------------------------------------------------------------------------
# Many observations: where the chunks run (--scheduler, --workers) and streamed runs (--out-dir)

DASK_HINT = "pip install 'onnxinv[dask]' (from a checkout: pip install '.[dask]')"


def _engine_options(command: _Command) -> _Command:
    """``--scheduler`` (or ``ONNXINV_SCHEDULER``) and ``--workers``."""
    command = click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=None,
        help="Local worker processes for a batch (default: one per core, when the batch is large enough "
        "to pay for them).",
    )(command)
    return click.option(
        "--scheduler",
        envvar="ONNXINV_SCHEDULER",
        default=None,
        metavar="ADDRESS",
        help="Run the batch's chunks on the Dask cluster of this scheduler (e.g. tcp://host:8786; default: "
        f"$ONNXINV_SCHEDULER). Needs the dask extra: {DASK_HINT}.",
    )(command)


def _folder_options(command: _Command) -> _Command:
    """``--out-dir``, ``--chunk-size``, ``--restart``."""
    command = click.option(
        "--restart",
        is_flag=True,
        help="With --out-dir: start over, deleting the results found in DIR (of this run or another).",
    )(command)
    command = click.option(
        "--chunk-size",
        type=click.IntRange(min=1),
        default=None,
        help="Observations per chunk (one task, one onnxruntime call; with --out-dir, one file; default "
        "256 with --out-dir, else chosen per batch).",
    )(command)
    return click.option(
        "--out-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        metavar="DIR",
        help="Stream the observations (.npy: memory-mapped) chunk by chunk into DIR: per-chunk results, "
        "then z.npy, verdicts.npy, residuals.npy and summary.json. Rerunning the same command resumes; "
        "other settings are refused unless --restart.",
    )(command)


class _Engine:
    """The chunks' engine the options ask for: a Dask client for --scheduler, else local processes."""

    def __init__(self, scheduler: str | None, workers: int | None, chunk_size: int | None) -> None:
        self.scheduler = scheduler.strip() if scheduler and scheduler.strip() else None
        if self.scheduler is not None and workers is not None:
            raise click.UsageError(
                "--workers and --scheduler exclude each other: the cluster's workers do the work "
                "(unset ONNXINV_SCHEDULER to use local processes)."
            )
        self.workers = workers
        self.chunk_size = chunk_size

    @contextlib.contextmanager
    def executor(self) -> Iterator[Any]:
        """A connected ``distributed.Client`` for --scheduler (closed afterwards), else None."""
        if self.scheduler is None:
            yield None
            return
        try:
            from distributed import Client
        except ImportError:
            raise OnnxInvError(
                f"--scheduler {self.scheduler}: Dask's distributed package is not installed. Hint: {DASK_HINT}."
            ) from None
        try:
            client = Client(self.scheduler)  # waits distributed.comm.timeouts.connect (Dask's config: 30 s)
        except (OSError, TimeoutError, ValueError) as exc:
            raise OnnxInvError(
                f"--scheduler {self.scheduler}: could not connect to a Dask scheduler there "
                f"({type(exc).__name__}: {_first_line(exc)}). Check the address (tcp://host:8786) and that "
                "the scheduler is running and reachable."
            ) from None
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.close()

    def options(self, executor: Any) -> dict[str, Any]:
        """Keyword arguments of ``invert`` / ``audit`` for this engine."""
        found: dict[str, Any] = {}
        if executor is not None:
            found["executor"] = executor
        elif self.workers is not None:
            found["workers"] = self.workers
        if self.chunk_size is not None:
            found["chunk_size"] = self.chunk_size
        return found


def _invert_to_folder(
    model: Path,
    obs: Path,
    out_dir: Path,
    method: str,
    noise: float | None,
    noise_model: str | None,
    mask: Path | None,
    as_json: bool,
    quiet: bool,
    flat: bool,
    time_limit: float | None,
    settings: Settings,
    restart: bool,
    engine: _Engine,
    fix: dict[str, Path],
    latent: str | None,
) -> None:
    """``invert --out-dir``: :func:`onnxinv.stream.invert_to_folder`, then its summary."""
    from onnxinv.stream import ProgressLine, invert_to_folder

    generator = _load(model, fix, latent)
    line = (
        ProgressLine(0, file=sys.stderr) if not quiet and not as_json and _is_terminal(sys.stderr) else None
    )
    kwargs: dict[str, Any] = {
        "method": method,
        "noise": noise,
        "noise_model": noise_model,
        "mask": mask,
        "settings": settings,
    }
    if time_limit is not None:
        kwargs["time_limit"] = time_limit
    try:
        with engine.executor() as executor:
            result = invert_to_folder(
                generator,
                obs,
                out_dir,
                restart=restart,
                flat=flat,
                progress=line,
                **kwargs,
                **engine.options(executor),
            )
    except (KeyboardInterrupt, _interrupted()) as exc:
        with contextlib.suppress(Exception):
            exc.onnxinv_note = (  # type: ignore[attr-defined]
                f"the chunks finished so far are kept in {out_dir}; run the same command again to resume"
            )
        raise
    finally:
        if line is not None:
            line.close()
    if as_json:
        _echo_json({"model": str(model), "observations": str(obs), **result.to_dict()})
    else:
        summary = ", ".join(f"{n} {name}" for name, n in result.counts.items())
        lines = [
            f"{result.count} observations: {summary}",
            f"chunks    {result.chunks} ({result.reused} done before, {result.chunks - result.reused} computed, "
            f"{result.engine}); {result.seconds:.2f} s, {result.observations_per_second:,.0f} observations/s",
            f"residual  max {result.residual_max:.2e} relative l2 (onnxruntime)",
            f"results   {out_dir}: z.npy {tuple(result.z_shape)} {result.z_dtype}, verdicts.npy, residuals.npy, "
            "summary.json",
        ]
        if not quiet:
            lines += [f"  #{i} {verdict}: {message}" for i, verdict, message in result.failed[:10]]
        _echo_text("\n".join(lines))
    if not result.success:
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
    help="Inversion method. " + "; ".join(f"{m.name}: {m.summary}" for m in INVERSION_METHODS.values()) + ".",
)
@click.option(
    "--noise",
    type=click.FloatRange(min=0.0),
    default=None,
    help="Noise level EPS the observation may carry: a bound on every entry's error (bounded noise) or its "
    "standard deviation (--noise-model gaussian). 0 means clean. Without it, 8-bit data (PNG) implies half "
    "a grey level.",
)
@click.option(
    "--noise-model",
    type=click.Choice(NOISE_MODELS),
    default=None,
    help="How to read --noise: bounded (default; a fit is max |G(z) - x| <= EPS) or gaussian (RMS residual "
    "about EPS).",
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
    "--measure",
    type=_EXISTING_FILE,
    default=None,
    help="A measurement matrix A (.npy / .npz, shape (m, n) for n model outputs): OBS holds y = A·G(z), "
    "m values per observation (compressed sensing). Methods: auto, lsq, gd.",
)
@click.option(
    "--recon",
    type=_OUTPUT_FILE,
    default=None,
    help="Also write the reconstruction G(z) computed by onnxruntime (.npy, float32: (n,) or (N, n)).",
)
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress bar and no per-observation lines; totals only."
)
@click.option(
    "--flat", is_flag=True, help="Write z flat, (k,) or (N, k), instead of in the model's input shape."
)
@click.option(
    "--time-limit",
    type=_Positive("seconds"),
    default=None,
    help="Seconds allowed per observation (default: the API's, 60).",
)
@_whole_network_options("observation")
@model_inputs
@_folder_options
@_engine_options
def invert(
    model: Path,
    obs: Path,
    output: Path | None,
    method: str,
    noise: float | None,
    noise_model: str | None,
    mask: Path | None,
    as_json: bool,
    png: Path | None,
    measure: Path | None,
    recon: Path | None,
    quiet: bool,
    flat: bool,
    time_limit: float | None,
    milp_time: float,
    latent_box: float | None,
    fix: dict[str, Path],
    latent: str | None,
    out_dir: Path | None = None,
    chunk_size: int | None = None,
    restart: bool = False,
    scheduler: str | None = None,
    workers: int | None = None,
) -> None:
    """Find z with G(z) = OBS for the generator in MODEL and say whether z is unique.

    OBS is a .npy file, a .npz file holding one array, or a PNG image when the model's output is
    image-shaped. It holds one observation (the model's output size, with or without batch and
    channel dims) or a batch (N, ...); it is inverted in its own dtype, as the Python API would.
    z is written in the model's input shape and dtype, (1, ...) for one observation or (N, ...) for a
    batch, so the file feeds the model as it is (--flat: (k,) or (N, k)). Outputs must be regular
    files (or new) and none of the inputs; all are written only when the whole run succeeds.

    The verdict follows onnxinv's contract: "unique" needs a proof, "not unique" a second latent
    that onnxruntime confirms, "fits" a confirmed fit without either; "no preimage" needs a proof
    and "not found" is everything else. Exit code 3 when some observation's verdict is "no preimage"
    or "not found".

    \b
    Many observations (README, "Many observations"):
      --out-dir DIR   stream OBS (.npy, memory-mapped) chunk by chunk into DIR;
                      rerun the same command to resume after a crash or SIGTERM
      --scheduler A   run the chunks on a Dask cluster (or ONNXINV_SCHEDULER)
      --workers N     N local processes
    """
    from onnxinv import files
    from onnxinv.inversion import Settings, Verdict

    settings = Settings(milp_time=milp_time, latent_box=latent_box)
    engine = _Engine(scheduler, workers, chunk_size)
    if out_dir is not None:
        for given, name in ((output, "-o/--output"), (png, "--png"), (recon, "--recon")):
            if given is not None:
                raise click.UsageError(
                    f"{name} cannot be used with --out-dir: the results are written to DIR."
                )
        if measure is not None:
            raise click.UsageError(
                "--measure cannot be used with --out-dir yet: invert the measurements in memory."
            )
        _invert_to_folder(
            model,
            obs,
            out_dir,
            method,
            noise,
            noise_model,
            mask,
            as_json,
            quiet,
            flat,
            time_limit,
            settings,
            restart,
            engine,
            fix,
            latent,
        )
        return
    if restart:
        raise click.UsageError("--restart only applies to --out-dir runs.")

    output = output if output is not None else Path.cwd() / f"{obs.stem}.z.npy"
    inputs = {f"the model {model}": model, f"the observation file {obs}": obs}
    if mask is not None:
        inputs[f"the mask {mask}"] = mask
    if measure is not None:
        inputs[f"the measurement matrix {measure}"] = measure
    for name, path in fix.items():
        inputs[f"the fixed input {name} ({path})"] = path
    with files.Outputs(inputs) as outputs:
        outputs.add(output, "-o")  # every output is checked before any work
        if png is not None:
            outputs.add(png, "--png")
        if recon is not None:
            outputs.add(recon, "--recon")
        generator = _load(model, fix, latent)
        layout = None
        if png is not None:
            layout = files.image_layout(generator)
            if layout is None:
                raise ObservationError(
                    f"--png {png}: the model's output {generator.output.describe()} is not image-shaped, so "
                    "there is no picture to draw; leave out --png."
                )
        matrix = None
        if measure is not None:
            able = [m.name for m in INVERSION_METHODS.values() if m.measure]
            if method not in able:
                raise click.UsageError(
                    f"--method {method} inverts the model's output itself and cannot start from measurements "
                    f"(--measure); use --method {' / '.join(able)}."
                )
            if png is not None:
                raise ObservationError(
                    f"--png {png}: with --measure the observations are measurements, not images; leave out --png."
                )
            matrix = _read_measure(measure, generator.output_dim)
        size = generator.output_dim if matrix is None else int(matrix.shape[0])
        observations = files.read_observations(obs, generator, require_finite=mask is None, size=size)
        mask_values = None
        if mask is not None:
            mask_values = files.read_mask(mask, size, observations.count)
            files.check_observed_finite(observations, mask_values)

        show_progress = not quiet and not as_json and not observations.single and _is_terminal(sys.stderr)
        started = time.perf_counter()
        with engine.executor() as executor:
            results = _invert_rows(
                generator,
                observations,
                method,
                noise,
                noise_model,
                mask_values,
                show_progress,
                time_limit,
                engine.options(executor),
                matrix,
                settings,
            )
        seconds = time.perf_counter() - started

        z = files.latent_for_model(
            np.stack([r.z for r in results]), generator, single=observations.single, flat=flat
        )
        outputs.stage(output, files.npy_bytes(z))
        if recon is not None:
            # invert sets every result's reconstruction (the field is optional only for hand-made results)
            recon_values = np.stack([r.reconstruction for r in results]).astype(np.float32)  # type: ignore[misc]
            outputs.stage(recon, files.npy_bytes(recon_values[0] if observations.single else recon_values))
        if layout is not None:
            shown = min(len(results), PNG_MAX_ROWS)
            reconstruction = generator.run_onnx(np.stack([r.z for r in results[:shown]]))
            assert png is not None  # a layout is only read for --png
            outputs.stage(png, _comparison_png(layout, observations.values[:shown], reconstruction))
        outputs.commit()

    counts = {v.value: sum(r.verdict is v for r in results) for v in Verdict}
    if as_json:
        _echo_json(
            {
                "model": str(model),
                "observations": str(obs),
                "output": str(output),
                "png": None if png is None else str(png),
                "recon": None if recon is None else str(recon),
                "single": observations.single,
                "count": len(results),
                "z_shape": list(z.shape),
                "z_dtype": z.dtype.name,
                "verdicts": counts,
                "seconds": seconds,
                "results": [r.to_dict() for r in results],
            }
        )
    else:
        _print_invert_summary(results, observations.single, counts, seconds, output, z, png, quiet, recon)
    if not all(r.verdict.success for r in results):
        click.get_current_context().exit(EXIT_NEGATIVE)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _read_measure(path: Path, output_dim: int) -> Weight | None:
    """The measurement matrix of ``--measure``, checked by the API's own rule (float, (m, n), finite)."""
    from onnxinv import files
    from onnxinv.observations import prepare_measure

    array = files.read_array(path, "measurement matrix")
    try:
        return prepare_measure(array, output_dim)
    except ObservationError as exc:
        raise ObservationError(f"{path}: {exc}") from None


def _invert_rows(
    generator: Generator,
    observations: Observations,
    method: str,
    noise: float | None,
    noise_model: str | None,
    mask: np.ndarray | None,
    show_progress: bool,
    time_limit: float | None = None,
    where: dict[str, Any] | None = None,
    measure: object = None,
    settings: Settings | None = None,
) -> list[InversionResult]:
    """Invert every row, behind a progress line on stderr (observations and chunks done, observations
    per second, time left; fed by the API's ``progress`` callback) when one is shown. The rows go to the
    API in their own dtype, so it judges them at the precision they were stored with. ``where``: the
    batch's ``workers`` / ``executor`` / ``chunk_size``."""
    from onnxinv.inversion import BatchInversionResult, InversionResult, invert
    from onnxinv.stream import ProgressLine

    kwargs: dict[str, Any] = {
        "method": method,
        "noise": noise,
        "noise_model": noise_model,
        "measure": measure,
        "settings": settings,
    }
    if time_limit is not None:
        kwargs["time_limit"] = time_limit
    rows = observations.values
    # batch=False always gives an InversionResult, batch=True a BatchInversionResult (invert's return
    # type is their union)
    if observations.single:
        return [cast(InversionResult, invert(generator, rows[0], mask=mask, batch=False, **kwargs))]
    kwargs.update(where or {})
    if not show_progress:
        return list(
            cast(BatchInversionResult, invert(generator, rows, mask=mask, batch=True, **kwargs)).results
        )
    with ProgressLine(rows.shape[0], file=sys.stderr) as line:
        batch = cast(
            BatchInversionResult, invert(generator, rows, mask=mask, batch=True, progress=line, **kwargs)
        )
    return list(batch.results)


def _comparison_png(layout: ImageLayout, observations: np.ndarray, reconstruction: np.ndarray) -> bytes:
    from onnxinv import files

    return files.encode_png(files.comparison_pixels(layout, observations, reconstruction))


def _print_invert_summary(
    results: Sequence[InversionResult],
    single: bool,
    counts: dict[str, int],
    seconds: float,
    output: Path,
    z: np.ndarray,
    png: Path | None,
    quiet: bool,
    recon: Path | None = None,
) -> None:
    from onnxinv.report import format_table, verdict_text

    if single:
        (r,) = results
        lines = [
            f"method    {r.method}"
            + (f" (asked: {r.requested})" if r.requested and r.requested != r.method else ""),
            f"verdict   {verdict_text(r.verdict)} ({r.reason.value})",
            f"evidence  {r.evidence.kind.value}"
            + (
                f": witness at max-abs distance {np.max(np.abs(r.witness - r.z)):.3g}"
                if r.witness is not None
                else ""
            )
            + (f": radius {r.radius:.3g} (max abs)" if r.radius is not None else ""),
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
    lines.append(f"z         written to {output} {tuple(z.shape)} {z.dtype.name}")
    if recon is not None:
        lines.append(f"recon     written to {recon}")
    if png is not None:
        more = (
            f" (the first {PNG_MAX_ROWS} of {len(results)} observations)"
            if len(results) > PNG_MAX_ROWS
            else ""
        )
        lines.append(f"png       written to {png}{more}")
    _echo_text("\n".join(lines))


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
        _echo_text(result.describe())
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
@click.option(
    "--seed",
    type=click.IntRange(0, SEED_MAX),
    default=0,
    show_default=True,
    help="Seed of the sampled latents (0 to 2**63 - 1).",
)
@_whole_network_options("sample")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of the report.")
@model_inputs
@_engine_options
def audit(
    model: Path,
    samples: int,
    obs: Path | None,
    seed: int,
    milp_time: float,
    latent_box: float | None,
    as_json: bool,
    fix: dict[str, Path],
    latent: str | None,
    scheduler: str | None = None,
    workers: int | None = None,
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
    engine = _Engine(scheduler, workers, None)
    with engine.executor() as executor:
        report = run_audit(
            source,
            samples=samples,
            observations=obs,
            seed=seed,
            milp_time=milp_time,
            latent_box=latent_box,
            **engine.options(executor),
        )
    document = report.to_dict()
    if as_json:
        _echo_json(document)
    else:
        _echo_text(report.describe(), _model_names(document))
    if not report.invertible:
        click.get_current_context().exit(EXIT_NEGATIVE)


def _model_names(document: Any) -> set[str]:
    """Node names an audit document carries (its ``source_nodes``), also without the " (Op, opset N)"
    the report adds to refused nodes: the strings to escape as a whole in the report's text."""
    names: set[str] = set()
    if isinstance(document, dict):
        for key, value in document.items():
            if key == "source_nodes" and isinstance(value, list):
                for name in value:
                    names.add(str(name))
                    bare = re.match(r"^(.*) \([^()]*, opset \d+\)$", str(name), re.S)
                    if bare:
                        names.add(bare.group(1))
            else:
                names |= _model_names(value)
    elif isinstance(document, list):
        for item in document:
            names |= _model_names(item)
    return names


if __name__ == "__main__":  # pragma: no cover
    main()
