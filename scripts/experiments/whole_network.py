"""Issue 11's benchmarks: the whole-network engine and the noisy / compressed-sensing fits, each against
the ground truth and (where there is one) gradient descent in the same run.

Sections (``--only`` picks some; every section writes ``whole_network_<section>.csv`` with one row per
observation, and a summary is printed as a table):

``sweep``
    ``k-250-600`` ReLU nets (N(0, 1/n_out) weights, no bias), ``k`` = 110, 120, 130, 140 (past the
    layer-wise edge at about 120), ``--nets`` nets each, ``z* ~ N(0, I)``, ``x`` the float32 model's
    output from onnxruntime; ``invert(method="auto")`` as users call it. *Backed*: the verdict has its
    evidence — "unique" a layer-wise (Theorem 2) or MILP certificate, "not unique" a witness latent
    re-checked through onnxruntime, "no preimage" an infeasibility proof; "fits" and "not found" are
    not backed. *Agree*: "unique" with ``‖ẑ − z*‖∞ ≤ δ`` (δ = 1e-2, the pipeline's radius), "not
    unique" whose witness this script re-checks through onnxruntime (and lies ``≥ δ`` from ẑ); a
    realizable observation must never get "no preimage". ``lw-ident``: the net is identifiable layer by
    layer at z* (for comparison).
``small``
    ``3-32-32-3`` ReLU (input size = output size, two non-expanding hidden layers): the MILP's build +
    find (``milp.build``, ``engine.find``), the found latent re-checked through onnxruntime.
``mid``
    ``20-100-200-500`` ReLU: build + find + certify at δ = 1e-2.
``decoder``
    ``20-200-500-784`` LeakyReLU(0.1), uniform noise ``1e-3·max|x|``: find (from the layer-wise exact
    estimate, whose time is reported apart), then the box ``[min z_i, max z_i]`` of every latent
    within the noise (``engine.bound``), in the default assumed box ``[-10, 10]^20``, in trust
    regions ``ẑ ± r`` around the latent found there (``--regions``, r = 0.01, 0.1, 1), and in
    ``z_lw ± r`` around the layer-wise estimate itself (the first r; the flow a user runs, whose
    "end to end" time adds the layer-wise call); each box is
    proved for the latents of its region only (never for all latents); ``bounded``: every side was
    proved tighter than the region; ``inside the box``: no side is the region's own; ``z* in``: the
    proved box contains z*; seconds: build + find + bound in that region (the layer-wise start apart).
``noisy``
    The shipped digits decoder (8 -> 40 ReLU -> 64 sigmoid), Gaussian pixel noise σ ∈ {0.01, 0.05,
    0.1}, all pixels and 50% masks (random per observation): ``invert(method="auto",
    noise_model="gaussian")`` against gradient descent (Adam, 5 restarts, ``network.descend``) given
    the wall time ``auto`` took on that observation, minimising the plain residual (``gd``) and the
    MAP objective with ``λ = σ²`` (``gd MAP``). Relative latent error ``‖z − z*‖ / ‖z*‖``.
``cs``
    Compressed sensing (Bora et al. 2017) on the digits decoder: ``y = A G(z*)``, ``A`` Gaussian with
    m = 10..60 rows (``A_ij ~ N(0, 1/m)``), clean; ``invert(method="auto", measure=A)`` against
    gradient descent with ``auto``'s wall time per observation; recovery = relative latent error
    ``≤ 1e-3``.

Times are wall seconds per observation in one process with one BLAS thread (``cpu``: process CPU
time); the machine may be shared, so medians and paired ratios are what to compare.

    python scripts/experiments/whole_network.py                     # 20 nets / 50 observations
    python scripts/experiments/whole_network.py --only noisy,cs --count 100
    python scripts/experiments/whole_network.py --quick             # smoke mode
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import onnxinv  # noqa: E402
from onnxinv.building import random_generator_layers  # noqa: E402
from onnxinv.inversion import invert, milp  # noqa: E402
from onnxinv.inversion.network import descend  # noqa: E402
from onnxinv.layers import Activation, Generator  # noqa: E402

NAME = "whole_network"
SECTIONS = ("sweep", "small", "mid", "decoder", "noisy", "cs")
DELTA = 1e-2
RESTARTS = 5
DIGITS = common.SAMPLE_MODELS / "digits_vae_legacy.onnx"
BACKING = {
    "unique": ("layerwise", "milp", "stability", "milp-bounds"),
    "not unique": ("witness", "null-direction"),
    "no preimage": ("layer-lp", "milp-infeasible"),
}


def parse_args(argv):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--only", type=common.parse_names, default=list(SECTIONS), help="sections to run")
    parser.add_argument("--nets", type=int, default=None, help="nets per setting of the MILP sections (20)")
    parser.add_argument("--count", type=int, default=None, help="observations per setting of noisy / cs (50)")
    parser.add_argument("--ks", type=common.parse_ints, default=[110, 120, 130, 140])
    parser.add_argument(
        "--limit", type=float, default=60.0, help="MILP seconds per observation (engine sections)"
    )
    parser.add_argument(
        "--regions",
        type=common.parse_floats,
        default=[0.01, 0.1, 1.0],
        help="half-widths of the decoder section's trust regions around the latent found",
    )
    args = parser.parse_args(argv)
    if args.nets is None:
        args.nets = 2 if args.quick else 20
    if args.count is None:
        args.count = 3 if args.quick else 50
    unknown = [s for s in args.only if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def _observation(layers, seed: int) -> tuple[np.ndarray, np.ndarray, Generator]:
    k = layers[0].in_features
    z = np.random.default_rng(10_000 + seed).normal(size=k)
    gen = Generator.from_layers(layers, dtype="float32")
    return z, gen.run_onnx(z).reshape(-1), gen


def _layerwise_identifiable(layers, z: np.ndarray) -> bool:
    h = z
    for layer in layers:
        a = layer.preactivation(h)
        rows = a > 0 if layer.activation is Activation.RELU else np.ones(a.size, dtype=bool)
        w = layer.dense_weight()[rows]
        if w.shape[0] < w.shape[1] or np.linalg.matrix_rank(w) < w.shape[1]:
            return False
        h = layer.forward(h)
    return True


def _reproduces(gen: Generator, z: np.ndarray, x: np.ndarray, rtol: float) -> bool:
    """onnxruntime: ``‖G(z) − x‖ ≤ rtol·‖x‖``."""
    out = gen.run_onnx(np.asarray(z, dtype=np.float64)).reshape(-1).astype(np.float64)
    return bool(np.linalg.norm(out - x) <= rtol * np.linalg.norm(x))


def _rel(z: np.ndarray, z_true: np.ndarray) -> float:
    if z is None or not np.all(np.isfinite(z)):
        return float("inf")
    return float(np.linalg.norm(z - z_true) / np.linalg.norm(z_true))


def _stats(values) -> str:
    v = [float(x) for x in values]
    return "-" if not v else f"{np.median(v):.3g} / {np.max(v):.3g}"


def _table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |", flush=True)


# --------------------------------------------------------------------------------------------------
# the k-sweep past the layer-wise edge (the pipeline, method auto)


def sweep(args) -> list[dict]:
    rows = []
    for k in args.ks:
        for net in range(args.nets):
            layers = random_generator_layers([k, 250, 600], rng=net)
            z_true, x, gen = _observation(layers, net)
            r, sec, cpu = _timed(lambda gen=gen, x=x, net=net: invert(gen, x, method="auto", seed=net))
            verdict, kind = r.verdict.value, r.evidence.kind.value
            backed = kind in BACKING.get(verdict, ())
            if verdict == "not unique":
                backed = backed and r.witness is not None
            tol = 2.0 * r.fit.tolerance if r.fit.criterion == "relative l2" else 1e-4
            if verdict == "unique":
                agree = float(np.max(np.abs(r.z - z_true))) <= DELTA
            elif verdict == "not unique":
                w = np.asarray(r.witness)
                agree = _reproduces(gen, w, x, tol) and float(np.max(np.abs(w - r.z))) >= DELTA * (1 - 1e-9)
            elif verdict == "fits":
                agree = _reproduces(gen, r.z, x, tol)  # not contradicted; not backed either
            else:
                agree = False  # the observation is realizable: "no preimage" / "not found" are wrong
            rows.append(
                {
                    "k": k,
                    "net": net,
                    "verdict": verdict,
                    "evidence": kind,
                    "backed": backed,
                    "agree": agree,
                    "linf_error": float(np.max(np.abs(r.z - z_true))),
                    "layerwise_identifiable": _layerwise_identifiable(layers, z_true),
                    "seconds": sec,
                    "cpu_seconds": cpu,
                }
            )
    common.write_csv(args.out / f"{NAME}_sweep.csv", rows, list(rows[0]))
    print(f"\nk-250-600 ReLU, invert(method='auto'), {args.nets} nets per k; backed = certificate or witness")
    table = []
    for k in args.ks:
        g = [r for r in rows if r["k"] == k]
        verdicts = {
            v: sum(r["verdict"] == v for r in g)
            for v in ("unique", "not unique", "fits", "no preimage", "not found")
        }
        table.append(
            [str(k), str(len(g))]
            + [str(n) for n in verdicts.values()]
            + [
                f"{np.mean([r['backed'] for r in g]):.0%}",
                f"{np.mean([r['agree'] for r in g]):.0%}",
                str(sum(r["layerwise_identifiable"] for r in g)),
                _stats(r["seconds"] for r in g),
                f"{np.median([r['cpu_seconds'] for r in g]):.3g}",
            ]
        )
    _table(
        [
            "k",
            "nets",
            "unique",
            "not unique",
            "fits",
            "no preimage",
            "not found",
            "backed",
            "agree",
            "lw-ident",
            "s median / max",
            "cpu",
        ],
        table,
    )
    return rows


# --------------------------------------------------------------------------------------------------
# the engine on its own: 3-32-32-3, 20-100-200-500, the 784 decoder


def small(args) -> list[dict]:
    rows = []
    for net in range(args.nets):
        layers = random_generator_layers([3, 32, 32, 3], rng=net)
        _, x, gen = _observation(layers, net)
        spec = milp.PreimageSpec.create(layers, x)
        found, sec, cpu = _timed(
            lambda spec=spec: milp.build(spec, time_limit=args.limit).find(time_limit=args.limit)
        )
        ok = found.finding is milp.Finding.FOUND and _witness_ok(layers, spec, found.z)
        rows.append(
            {
                "net": net,
                "finding": found.finding.value,
                "checked": ok,
                "proved_by": found.proved_by,
                "seconds": sec,
                "cpu_seconds": cpu,
            }
        )
    common.write_csv(args.out / f"{NAME}_small.csv", rows, list(rows[0]))
    print(f"\n3-32-32-3 ReLU: MILP build + find (goal <= 1 s), {args.nets} nets")
    _table(
        ["nets", "found (onnxruntime-checked)", "s median / max", "cpu median"],
        [
            [
                str(len(rows)),
                str(sum(r["checked"] for r in rows)),
                _stats(r["seconds"] for r in rows),
                f"{np.median([r['cpu_seconds'] for r in rows]):.3g}",
            ]
        ],
    )
    return rows


def _witness_ok(layers, spec: milp.PreimageSpec, w: np.ndarray | None) -> bool:
    """onnxruntime (float64 model) confirms that ``w`` reproduces the observation within the band."""
    if w is None:
        return False
    out = Generator.from_layers(layers, dtype="float64").run_onnx(w).reshape(-1)[spec.rows]
    return bool(np.all(np.abs(out - spec.observed) <= spec.slack * (1 + 1e-9)))


def mid(args) -> list[dict]:
    rows = []
    for net in range(args.nets):
        layers = random_generator_layers([20, 100, 200, 500], rng=net)
        z_true, x, _ = _observation(layers, net)
        spec = milp.PreimageSpec.create(layers, x)

        def run(spec=spec):
            engine = milp.build(spec, time_limit=0.3 * args.limit)
            found = engine.find(time_limit=0.3 * args.limit)
            cert = (
                engine.certify(found.z, DELTA, time_limit=0.7 * args.limit) if found.z is not None else None
            )
            return engine, found, cert

        (engine, found, cert), sec, cpu = _timed(run)
        finding = found.finding if cert is None else cert.finding
        if finding is milp.Finding.UNIQUE:
            agree = float(np.max(np.abs(found.z - z_true))) <= DELTA
        elif finding is milp.Finding.NOT_UNIQUE:
            agree = _witness_ok(layers, spec, cert.witness)
        else:
            agree = False
        rows.append(
            {
                "net": net,
                "finding": finding.value,
                "agree": agree,
                "binaries": engine.binaries,
                "seconds": sec,
                "cpu_seconds": cpu,
            }
        )
    common.write_csv(args.out / f"{NAME}_mid.csv", rows, list(rows[0]))
    print(
        f"\n20-100-200-500 ReLU: MILP build + find + certify at delta {DELTA:g} (goal median <= 5 s), {args.nets} nets"
    )
    counts = {f: sum(r["finding"] == f for r in rows) for f in sorted({r["finding"] for r in rows})}
    _table(
        ["nets", "findings", "agree", "binaries median", "s median / max", "cpu median"],
        [
            [
                str(len(rows)),
                ", ".join(f"{k}: {v}" for k, v in counts.items()),
                f"{np.mean([r['agree'] for r in rows]):.0%}",
                f"{np.median([r['binaries'] for r in rows]):.0f}",
                _stats(r["seconds"] for r in rows),
                f"{np.median([r['cpu_seconds'] for r in rows]):.3g}",
            ]
        ],
    )
    return rows


def decoder(args) -> list[dict]:
    rows = []
    boxes = ["default [-10, 10]^20", *(f"trust region z_hat ± {r:g}" for r in args.regions)]
    # the flow a user runs: the layer-wise estimate, then the box in a trust region around it (no search
    # in the default box first); its "end to end" time adds the layer-wise call
    boxes.append(f"layer-wise z ± {args.regions[0]:g}")
    centres: list[str | None] = [None, *(["found"] * len(args.regions)), "layer-wise"]
    radii = [None, *args.regions, args.regions[0]]
    for net in range(args.nets):
        layers = random_generator_layers(
            [20, 200, 500, 784], activation=Activation.LEAKY_RELU, slope=0.1, rng=net
        )
        z_true, x, gen = _observation(layers, net)
        eps = 1e-3 * float(np.max(np.abs(x)))
        x = x + np.random.default_rng(net).uniform(-eps, eps, size=x.shape)
        layerwise, lw_sec, _ = _timed(lambda gen=gen, x=x, eps=eps: invert(gen, x, method="exact", noise=eps))
        start = layerwise.z
        found_z = None
        for box, radius, centre in zip(boxes, radii, centres):
            if radius is None:
                spec = milp.PreimageSpec.create(layers, x, noise=eps)
            else:
                start = found_z if centre == "found" else layerwise.z
                if start is None or (centre == "layer-wise" and not layerwise.verdict.success):
                    continue
                spec = milp.PreimageSpec.create(layers, x, noise=eps, box=(start - radius, start + radius))

            def run(spec=spec, start=start):
                engine = milp.build(spec, time_limit=0.4 * args.limit)
                f = engine.find(time_limit=0.2 * args.limit, start=start)
                return f, engine.bound(time_limit=0.4 * args.limit, start=f.z)

            (f, b), sec, cpu = _timed(run)
            if radius is None:
                found_z = f.z
            bounded = b.finding is milp.Finding.BOUNDED
            rows.append(
                {
                    "net": net,
                    "box": box,
                    "found": f.finding is milp.Finding.FOUND,
                    "bounded": bounded,
                    "inside": bool(not b.at_box.any()),
                    "contains_truth": bool(np.all((b.lower <= z_true) & (z_true <= b.upper))),
                    "width_max": float(np.max(b.upper - b.lower)),
                    "radius": b.radius(f.z) if f.z is not None else float("nan"),
                    "seconds": sec,
                    "cpu_seconds": cpu,
                    "layerwise_seconds": lw_sec,
                    "end_to_end_seconds": lw_sec + sec if centre == "layer-wise" else float("nan"),
                }
            )
    common.write_csv(args.out / f"{NAME}_decoder.csv", rows, list(rows[0]))
    print(
        f"\n20-200-500-784 LeakyReLU(0.1), uniform noise 1e-3·max|x|: find + bound (goal <= 2 s with a box), {args.nets} nets"
    )
    table = []
    for box in dict.fromkeys(r["box"] for r in rows):
        g = [r for r in rows if r["box"] == box]
        table.append(
            [
                box,
                str(len(g)),
                str(sum(r["found"] for r in g)),
                str(sum(r["bounded"] for r in g)),
                str(sum(r["inside"] for r in g)),
                str(sum(r["contains_truth"] for r in g)),
                f"{np.median([r['width_max'] for r in g]):.3g}",
                f"{np.median([r['radius'] for r in g]):.3g}",
                _stats(r["seconds"] for r in g),
                f"{np.median([r['layerwise_seconds'] for r in g]):.3g}",
                _stats(r["end_to_end_seconds"] for r in g) if box.startswith("layer-wise") else "-",
            ]
        )
    _table(
        [
            "box",
            "nets",
            "found",
            "bounded",
            "inside the box",
            "z* in",
            "width median",
            "radius median",
            "s median / max",
            "layer-wise s",
            "end to end s",
        ],
        table,
    )
    return rows


# --------------------------------------------------------------------------------------------------
# the digits decoder: Gaussian noise and masks, compressed sensing


def _gd(g, y, budget, seed, index, *, mask=None, measure=None, prior=0.0) -> np.ndarray:
    """Adam from 5 random restarts, best kept: for ``budget`` seconds, or 1000 iterations when None."""
    t0 = time.perf_counter()
    z, _, _ = descend(
        g.layers,
        y[None, :],
        masks=None if mask is None else mask[None, :],
        measure=measure,
        prior=prior,
        restarts=RESTARTS,
        iterations=10**7 if budget is not None else 1000,
        seed=seed,
        indices=np.array([index]),
        deadline=None if budget is None else t0 + budget,
    )
    return z[0]


def noisy(args) -> list[dict]:
    g = onnxinv.load(DIGITS)
    rows = []
    for masked in (False, True):
        for si, sigma in enumerate((0.01, 0.05, 0.1)):
            for i in range(args.count):
                rng = common.instance_rng(args.seed, 11, int(masked), si, i)
                z_true = rng.standard_normal(g.latent_dim)
                y = g.run_onnx(z_true).reshape(-1).astype(np.float64) + sigma * rng.standard_normal(
                    g.output_dim
                )
                mask = rng.random(g.output_dim) < 0.5 if masked else None
                r, sec, cpu = _timed(
                    lambda y=y, mask=mask, sigma=sigma, i=i: invert(
                        g, y, method="auto", noise=sigma, noise_model="gaussian", mask=mask, seed=i
                    )
                )
                z_gd = _gd(g, y, sec, args.seed, i, mask=mask)
                z_gdm = _gd(g, y, sec, args.seed, i, mask=mask, prior=sigma**2)
                z_g1k = _gd(g, y, None, args.seed, i, mask=mask)
                rows.append(
                    {
                        "observed": "50%" if masked else "all",
                        "sigma": sigma,
                        "run": i,
                        "verdict": r.verdict.value,
                        "kept": r.method,
                        "err_auto": _rel(r.z, z_true),
                        "err_gd": _rel(z_gd, z_true),
                        "err_gd_map": _rel(z_gdm, z_true),
                        "err_gd_1000": _rel(z_g1k, z_true),
                        "seconds": sec,
                        "cpu_seconds": cpu,
                    }
                )
    common.write_csv(args.out / f"{NAME}_noisy.csv", rows, list(rows[0]))
    print(
        f"\ndigits decoder, Gaussian noise: median relative latent error, {args.count} observations per row"
    )
    table = []
    for (obs, sigma), grp in common.group_rows(rows, ["observed", "sigma"]).items():
        ea, eg, em = (np.array([r[c] for r in grp]) for c in ("err_auto", "err_gd", "err_gd_map"))
        table.append(
            [
                obs,
                f"{sigma:g}",
                f"{np.median(ea):.3g}",
                f"{np.median(eg):.3g}",
                f"{np.median(em):.3g}",
                f"{np.median([r['err_gd_1000'] for r in grp]):.3g}",
                f"{np.median(eg / ea):.3g}",
                # ties (both reach the same minimiser) are not losses: 1e-6 relative slack
                "yes" if np.median(ea) <= np.median(eg) * (1 + 1e-6) else "NO",
                "yes" if np.median(ea) <= np.median(em) * (1 + 1e-6) else "NO",
                f"{1e3 * np.median([r['seconds'] for r in grp]):.0f}",
                ", ".join(sorted({r["verdict"] for r in grp})),
            ]
        )
    _table(
        [
            "observed",
            "sigma",
            "auto",
            "gd",
            "gd MAP",
            "gd 1000 it",
            "gd/auto (paired median)",
            "auto <= gd",
            "auto <= gd MAP",
            "auto ms",
            "verdicts",
        ],
        table,
    )
    return rows


def cs(args) -> list[dict]:
    g = onnxinv.load(DIGITS)
    rows = []
    for m in (10, 20, 30, 40, 50, 60):
        for i in range(args.count):
            rng = common.instance_rng(args.seed, 12, m, i)
            z_true = rng.standard_normal(g.latent_dim)
            a = rng.normal(0.0, 1.0 / np.sqrt(m), size=(m, g.output_dim))
            y = a @ g.run_onnx(z_true).reshape(-1).astype(np.float64)
            r, sec, cpu = _timed(lambda y=y, a=a, i=i: invert(g, y, method="auto", measure=a, seed=i))
            z_gd = _gd(g, y, sec, args.seed, i, measure=a)
            z_g1k = _gd(g, y, None, args.seed, i, measure=a)
            rows.append(
                {
                    "m": m,
                    "run": i,
                    "verdict": r.verdict.value,
                    "kept": r.method,
                    "err_auto": _rel(r.z, z_true),
                    "err_gd": _rel(z_gd, z_true),
                    "err_gd_1000": _rel(z_g1k, z_true),
                    "seconds": sec,
                    "cpu_seconds": cpu,
                }
            )
    common.write_csv(args.out / f"{NAME}_cs.csv", rows, list(rows[0]))
    print(
        f"\ndigits decoder, compressed sensing y = A G(z*): recovery rate (rel. error <= 1e-3), {args.count} observations per m"
    )
    table = []
    for (m,), grp in common.group_rows(rows, ["m"]).items():
        ea, eg = (np.array([r[c] for r in grp]) for c in ("err_auto", "err_gd"))
        table.append(
            [
                str(m),
                f"{np.mean(ea <= 1e-3):.2f}",
                f"{np.mean(eg <= 1e-3):.2f}",
                f"{np.mean(eg <= 1e-2):.2f}",
                f"{np.mean(np.array([r['err_gd_1000'] for r in grp]) <= 1e-3):.2f}",
                f"{1e3 * np.median([r['seconds'] for r in grp]):.0f}",
                ", ".join(
                    f"{v}: {sum(r['verdict'] == v for r in grp)}" for v in sorted({r["verdict"] for r in grp})
                ),
            ]
        )
    _table(["m", "auto", "gd", "gd (<= 1e-2)", "gd 1000 it", "auto ms", "verdicts"], table)
    return rows


# --------------------------------------------------------------------------------------------------
# plots


def plot(results: dict[str, list[dict]], args) -> None:
    panels = [s for s in ("sweep", "noisy", "cs") if results.get(s)]
    if not panels:
        return
    plt = common.pyplot(args.no_plots)
    if plt is None:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.8), squeeze=False)
    for ax, name in zip(axes[0], panels):
        rows = results[name]
        if name == "sweep":
            ks = sorted({r["k"] for r in rows})
            for key, label, color in (
                ("backed", "verdict backed (certificate / witness)", "tab:blue"),
                ("agree", "agrees with z*", "tab:green"),
                ("layerwise_identifiable", "identifiable layer-wise", "0.6"),
            ):
                ax.plot(
                    ks,
                    [100 * np.mean([r[key] for r in rows if r["k"] == k]) for k in ks],
                    marker="o",
                    color=color,
                    label=label,
                )
            ax2 = ax.twinx()
            ax2.plot(
                ks,
                [np.median([r["seconds"] for r in rows if r["k"] == k]) for k in ks],
                ls="--",
                color="tab:red",
                marker="x",
                label="median s per observation",
            )
            ax2.set_ylabel("median seconds (dashed)")
            ax.set_ylim(-3, 103)
            ax.set_xlabel("latent size k")
            ax.set_ylabel("% of nets")
            ax.set_title(f"k-250-600 ReLU, auto, {len(rows) // len(ks)} nets per k", fontsize=10)
            ax.legend(fontsize=7, loc="center left")
        elif name == "noisy":
            for obs, ls in (("all", "-"), ("50%", "--")):
                sig = sorted({r["sigma"] for r in rows if r["observed"] == obs})
                for col, label, color in (
                    ("err_auto", "auto", "tab:cyan"),
                    ("err_gd", "GD (Adam, 5 restarts)", "tab:red"),
                    ("err_gd_map", "GD MAP", "tab:brown"),
                ):
                    med = [
                        np.median([r[col] for r in rows if r["observed"] == obs and r["sigma"] == s])
                        for s in sig
                    ]
                    ax.plot(sig, med, ls=ls, marker="o", color=color, label=f"{label}, {obs} pixels")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("noise sigma")
            ax.set_ylabel("median relative latent error")
            ax.set_title(
                f"digits decoder, Gaussian noise, {args.count} obs. per point\nGD at auto's wall time",
                fontsize=10,
            )
            ax.legend(fontsize=6)
        else:
            ms = sorted({r["m"] for r in rows})
            for col, label, color in (
                ("err_auto", "auto", "tab:cyan"),
                ("err_gd", "GD (Adam, 5 restarts, same time)", "tab:red"),
                ("err_gd_1000", "GD, 1000 iterations (no time limit)", "tab:orange"),
            ):
                ax.plot(
                    ms,
                    [100 * np.mean([r[col] <= 1e-3 for r in rows if r["m"] == m]) for m in ms],
                    marker="o",
                    color=color,
                    label=label,
                )
            ax.set_ylim(-3, 103)
            ax.set_xlabel("measurements m")
            ax.set_ylabel("recovery rate (%), rel. error <= 1e-3")
            ax.set_title(f"compressed sensing, digits decoder, {args.count} obs. per m", fontsize=10)
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    common.save_figure(fig, args.out / f"{NAME}.png")
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    common.apply_common_args(args)
    runners = {"sweep": sweep, "small": small, "mid": mid, "decoder": decoder, "noisy": noisy, "cs": cs}
    if args.replot:
        results = {
            s: common.read_table(args.out / f"{NAME}_{s}.csv")
            for s in ("sweep", "noisy", "cs")
            if (args.out / f"{NAME}_{s}.csv").is_file()
        }
        plot(results, args)
        return 0
    elapsed = common.timer()
    print(
        f"{NAME}: sections {', '.join(args.only)}; {args.nets} nets per MILP setting, {args.count} observations per noisy / cs setting; one process, one BLAS thread"
    )
    results = {}
    for name in args.only:
        t0 = time.perf_counter()
        results[name] = runners[name](args)
        print(f"({name}: {time.perf_counter() - t0:.0f} s)", flush=True)
    for name in ("sweep", "noisy", "cs"):  # panels of sections not run now: from the CSV files in --out
        path = args.out / f"{NAME}_{name}.csv"
        if name not in results and path.is_file():
            results[name] = common.read_table(path)
    plot(results, args)
    common.record_run_time(args.out, NAME, elapsed(), args)
    print(f"{NAME}: done in {elapsed():.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
