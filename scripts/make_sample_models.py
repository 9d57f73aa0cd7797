"""Make the sample models in ``sample_models/`` and the observations that go with them.

Usage::

    pip install -e .[export]
    python scripts/make_sample_models.py [--out sample_models] [--only gaussian vae mlp conv]

What it writes (every step uses a fixed seed, so a rerun on the same versions gives the same files):

* random Gaussian generators (weights N(0, 1/n_out), zero biases) built with ``onnxinv.building``;
* a VAE trained on scikit-learn's 8x8 digits whose decoder is exported twice by torch, once with the
  legacy TorchScript exporter and once with the default dynamo exporter (external data sidecar);
* a scikit-learn ``MLPRegressor`` from standardized PCA codes of the digits to pixels, converted by skl2onnx;
* convolutional generators trained as GANs on the digits upsampled to 16x16 (DCGAN-style ConvTranspose
  blocks on a (N, k, 1, 1) latent or after a Linear + Unflatten, an Upsample + Conv variant, and a
  conditional one with a one-hot label concatenated with the noise), each exported by both torch
  exporters, and a Keras Conv2DTranspose decoder converted by tf2onnx (when tensorflow is installed);
* for the trained models and ``gaussian_20_100_500_relu``: a clean observation, a clean batch and a noisy
  batch, each with the latents that produced it, as float32 ``.npy`` files (only the observation for the
  convolutional models).

torch, scikit-learn, skl2onnx, tensorflow and tf2onnx are imported only inside the functions that need
them; onnxinv itself never needs them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

try:
    import onnxinv  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnxinv.building import IR_VERSION, build_model, random_generator_layers  # noqa: E402
from onnxinv.layers import Activation  # noqa: E402

MAX_FILE_BYTES = 2 * 1024 * 1024
BATCH = 16
LATENT_DIM = 8  # latent size of the digits models
HIDDEN = 40  # hidden width of the digits models: wider than the latent, not wider than the 64 pixels
DIGITS_NOISE_SIGMA = 0.01  # Gaussian noise added to the digits models' noisy batches
GAUSSIAN_NOISE_REL = 1e-3  # uniform noise U(-e, e), e = this * max|x| per observation, for the Gaussian net
ACTIVE_FACTOR = 2  # a ReLU layer with m inputs needs at least this * m active units on a chosen latent
SIGMOID_LOGIT_LIMIT = float(np.log(1e4 - 1))  # |logit| <= this <=> sigmoid output in [1e-4, 1 - 1e-4]


# --------------------------------------------------------------------------------------------------
# onnxruntime helpers


def ort_session(model: onnx.ModelProto | str | Path):
    """An onnxruntime CPU session on the fully inlined model, with every graph optimization off."""
    import onnxruntime as ort

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))  # loads external data, so the bytes below are self-contained
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )


def ort_run(session, z: np.ndarray) -> np.ndarray:
    """Run a float32 batch of latents through the session's single input and return its output."""
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(z, dtype=np.float32)})[0]


def op_types(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def describe_ops(model: onnx.ModelProto) -> str:
    counts: dict[str, int] = {}
    for op in op_types(model):
        counts[op] = counts.get(op, 0) + 1
    return ", ".join(f"{op} x{n}" if n > 1 else op for op, n in counts.items())


# --------------------------------------------------------------------------------------------------
# choosing latents on which inversion is well posed


Check = Callable[[np.ndarray], tuple[bool, list[int]]]


def relu_check(relu_layers: list[tuple[np.ndarray, np.ndarray]]) -> Check:
    """A check that every ReLU layer has enough active units at ``z`` for its input to be determined.

    ``relu_layers`` lists ``(W, b)`` of consecutive ReLU layers (W is (out, in)). At each layer the rows
    with a positive pre-activation must number at least ``ACTIVE_FACTOR * in`` and have full column rank.
    The check returns the verdict and the active counts per layer.
    """

    def check(z: np.ndarray) -> tuple[bool, list[int]]:
        h = np.asarray(z, dtype=np.float64)
        counts, ok = [], True
        for weight, bias in relu_layers:
            pre = weight @ h + bias
            active = pre > 0
            counts.append(int(active.sum()))
            n_in = weight.shape[1]
            if active.sum() < ACTIVE_FACTOR * n_in or np.linalg.matrix_rank(weight[active]) < n_in:
                ok = False
            h = np.maximum(pre, 0.0)
        return ok, counts

    return check


def pick_latents(draw: Callable[[], np.ndarray], check: Check, count: int) -> tuple[np.ndarray, list, int]:
    """Draw latents with ``draw()`` until ``count`` pass ``check``.

    Returns the accepted latents (count, k) as float32, the check's counts for each, and how many draws
    were rejected.
    """
    accepted, counts, rejected = [], [], 0
    while len(accepted) < count:
        z = draw()
        ok, numbers = check(z)
        if ok:
            accepted.append(z)
            counts.append(numbers)
        else:
            rejected += 1
        if rejected > 1000:
            raise RuntimeError("could not find latents that pass the check; the model looks degenerate")
    return np.stack(accepted).astype(np.float32), counts, rejected


# --------------------------------------------------------------------------------------------------
# writing files


def save_model(model: onnx.ModelProto, path: Path) -> None:
    onnx.save(model, str(path))
    print(f"  wrote {path.name} ({path.stat().st_size / 1024:.1f} KiB)")


def save_array(path: Path, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array, dtype=np.float32)
    np.save(path, array, allow_pickle=False)
    print(f"  wrote {path.name} {array.shape}")


def write_observations(
    out: Path,
    stem: str,
    session,
    z_true: np.ndarray,
    batch_z: np.ndarray,
    obs_shape: tuple[int, ...],
    add_noise: Callable[[np.ndarray], np.ndarray],
) -> dict[str, float]:
    """Write ``<stem>.obs/.z_true/.batch/.batch_z_true/.batch_noisy.npy`` computed by onnxruntime."""
    k = batch_z.shape[1]
    obs = ort_run(session, z_true.reshape(1, k)).reshape(obs_shape)
    batch = ort_run(session, batch_z).reshape(batch_z.shape[0], -1)
    noisy = (batch.astype(np.float64) + add_noise(batch.astype(np.float64))).astype(np.float32)
    save_array(out / f"{stem}.z_true.npy", z_true)
    save_array(out / f"{stem}.obs.npy", obs)
    save_array(out / f"{stem}.batch_z_true.npy", batch_z)
    save_array(out / f"{stem}.batch.npy", batch)
    save_array(out / f"{stem}.batch_noisy.npy", noisy)
    diff = noisy.astype(np.float64) - batch
    return {"noise_max_abs": float(np.abs(diff).max()), "noise_rms": float(np.sqrt(np.mean(diff**2)))}


# --------------------------------------------------------------------------------------------------
# 1. random Gaussian generators


GAUSSIAN_MODELS = [
    # name, sizes, activation, seed
    ("gaussian_20_100_500_relu", [20, 100, 500], Activation.RELU, 100),
    ("gaussian_20_250_600_relu", [20, 250, 600], Activation.RELU, 101),
    ("gaussian_20_100_200_500_leaky", [20, 100, 200, 500], Activation.LEAKY_RELU, 102),
    ("gaussian_20_60_784_relu", [20, 60, 784], Activation.RELU, 103),
]
GAUSSIAN_WITH_OBSERVATIONS = "gaussian_20_100_500_relu"
GAUSSIAN_OBS_SEED = 200


def make_gaussian_models(out: Path) -> None:
    """Random generators, weights N(0, 1/n_out), zero biases, the same activation on every layer."""
    print("Gaussian generators")
    for name, sizes, activation, seed in GAUSSIAN_MODELS:
        layers = random_generator_layers(sizes, activation=activation, slope=0.2, rng=seed)
        model = build_model(layers, dtype="float32", opset=17, input_name="z", output_name="x", batch_dim="N")
        onnx.checker.check_model(model)
        path = out / f"{name}.onnx"
        save_model(model, path)
        print(f"    ops: {describe_ops(model)}")

        if name != GAUSSIAN_WITH_OBSERVATIONS:
            continue
        session = ort_session(path)
        relu = [(layer.weight, layer.bias) for layer in layers]
        rng = np.random.default_rng(GAUSSIAN_OBS_SEED)
        k = sizes[0]
        picked, counts, rejected = pick_latents(
            lambda rng=rng, k=k: rng.standard_normal(k), relu_check(relu), 1 + BATCH
        )
        noise_rng = np.random.default_rng(GAUSSIAN_OBS_SEED + 1)

        def uniform_noise(x: np.ndarray, noise_rng=noise_rng) -> np.ndarray:
            eps = GAUSSIAN_NOISE_REL * np.abs(x).max(axis=1, keepdims=True)
            return noise_rng.uniform(-1.0, 1.0, size=x.shape) * eps

        stats = write_observations(out, name, session, picked[0], picked[1:], (sizes[-1],), uniform_noise)
        _report_active(name, counts, rejected, [layer.in_features for layer in layers])
        print(f"    noisy batch: max|noise| {stats['noise_max_abs']:.3g}, rms {stats['noise_rms']:.3g}")


def _report_active(name: str, counts: list[list[int]], rejected: int, n_in: list[int]) -> None:
    arr = np.array(counts)
    parts = [
        f"layer {i + 1} (in {n_in[i]}): z_true {arr[0, i]}, batch min {arr[1:, i].min()} "
        f"median {int(np.median(arr[1:, i]))}"
        for i in range(arr.shape[1])
    ]
    print(f"    active ReLU units for {name}: " + "; ".join(parts) + f"; rejected draws: {rejected}")


# --------------------------------------------------------------------------------------------------
# digits data


def load_digits_unit() -> np.ndarray:
    """scikit-learn's 1797 8x8 digits as (1797, 64) float32 in [0, 1]."""
    from sklearn.datasets import load_digits

    return (load_digits().data / 16.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# 2. VAE on digits, decoder exported by torch


VAE_SEED = 0
VAE_EPOCHS = 300
VAE_BATCH = 64
VAE_LR = 2e-3
VAE_BETA = 0.25  # KL weight; with beta = 1 half the latent dims collapse and the decoder ignores them
VAE_OBS_SEED = 300


def train_digits_vae(x: np.ndarray):
    """Train a small beta-VAE on the digits; return the decoder in eval mode and training figures.

    Loss per image: binary cross-entropy summed over the 64 pixels + VAE_BETA * KL(q(z|x) || N(0, I)).
    """
    import torch
    from torch import nn

    torch.manual_seed(VAE_SEED)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread keeps float reductions in a fixed order
    try:
        encoder = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2 * LATENT_DIM))
        decoder = nn.Sequential(
            nn.Linear(LATENT_DIM, HIDDEN),
            nn.BatchNorm1d(HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, 64),
            nn.Sigmoid(),
            nn.Unflatten(1, (1, 8, 8)),
        )
        params = list(encoder.parameters()) + list(decoder.parameters())
        optimizer = torch.optim.Adam(params, lr=VAE_LR)
        data = torch.from_numpy(x)
        gen = torch.Generator().manual_seed(VAE_SEED)
        n = data.shape[0]
        epoch_loss = float("nan")
        for _epoch in range(VAE_EPOCHS):
            encoder.train()
            decoder.train()
            perm = torch.randperm(n, generator=gen)
            total = 0.0
            for start in range(0, n, VAE_BATCH):
                idx = perm[start : start + VAE_BATCH]
                if len(idx) < 2:  # BatchNorm needs two samples
                    continue
                xb = data[idx]
                mu, logvar = encoder(xb).chunk(2, dim=1)
                eps = torch.randn(mu.shape, generator=gen)
                z = mu + torch.exp(0.5 * logvar) * eps
                recon = decoder(z).reshape(len(idx), 64)
                bce = nn.functional.binary_cross_entropy(recon, xb, reduction="sum")
                kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
                loss = (bce + VAE_BETA * kl) / len(idx)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
            epoch_loss = total / n

        encoder.eval()
        decoder.eval()
        with torch.no_grad():
            mu, logvar = encoder(data).chunk(2, dim=1)
            recon = decoder(mu).reshape(n, 64)
            bce = nn.functional.binary_cross_entropy(recon, data, reduction="sum") / n
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=0) / n
            mse = float(torch.mean((recon - data) ** 2))
        figures = {
            "final_epoch_loss": epoch_loss,
            "eval_bce_per_image": float(bce),
            "eval_kl_per_dim": [round(float(v), 3) for v in kl],
            "eval_recon_mse": mse,
        }
        return decoder, figures
    finally:
        torch.set_num_threads(threads)


def decoder_relu_layer(decoder) -> tuple[np.ndarray, np.ndarray]:
    """The decoder's first Linear with its eval-mode BatchNorm folded in, as float64 (W, b)."""
    linear, bn = decoder[0], decoder[1]
    w = linear.weight.detach().double().numpy()
    b = linear.bias.detach().double().numpy()
    scale = bn.weight.detach().double().numpy() / np.sqrt(bn.running_var.detach().double().numpy() + bn.eps)
    shift = bn.bias.detach().double().numpy() - scale * bn.running_mean.detach().double().numpy()
    return scale[:, None] * w, scale * b + shift


def check_against_torch(decoder, session, z: np.ndarray, what: str) -> float:
    import torch

    with torch.no_grad():
        expected = decoder(torch.from_numpy(z)).numpy()
    got = ort_run(session, z)
    if got.shape != expected.shape:
        raise AssertionError(f"{what}: onnxruntime shape {got.shape} != torch shape {expected.shape}")
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5, err_msg=what)
    return float(np.abs(got - expected).max())


def export_legacy(decoder, path: Path) -> onnx.ModelProto:
    """The TorchScript-based exporter: Gemm, unfolded BatchNormalization, Unflatten as Shape/Slice/Concat."""
    import torch

    z_example = torch.zeros(2, LATENT_DIM)
    torch.onnx.export(
        decoder,
        z_example,
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["z"],
        output_names=["image"],
        dynamic_axes={"z": {0: "batch"}, "image": {0: "batch"}},
    )
    return _lower_ir_if_needed(path)


def export_dynamo(decoder, path: Path) -> onnx.ModelProto:
    """The default (dynamo) exporter with its weights in a ``<name>.onnx.data`` sidecar."""
    import torch

    z_example = torch.zeros(2, LATENT_DIM)
    data_path = path.with_name(path.name + ".data")
    if data_path.exists():
        data_path.unlink()
    torch.onnx.export(
        decoder,
        (z_example,),
        str(path),
        dynamo=True,
        input_names=["z"],
        output_names=["image"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        external_data=True,
    )
    if not data_path.exists():
        raise AssertionError(f"the dynamo export did not write {data_path.name}")
    return _lower_ir_if_needed(path, external_data=data_path.name)


def _lower_ir_if_needed(path: Path, external_data: str | None = None) -> onnx.ModelProto:
    """Return the model as loaded (external data inlined); lower its IR version if onnxruntime refuses it."""
    model = onnx.load(str(path))
    try:
        ort_session(model)
        return model
    except Exception as exc:
        if model.ir_version <= IR_VERSION:
            raise
        print(f"    onnxruntime refuses IR version {model.ir_version} ({exc}); rewriting with {IR_VERSION}")
    model.ir_version = IR_VERSION
    if external_data is None:
        onnx.save(model, str(path))
    else:
        onnx.save(model, str(path), save_as_external_data=True, location=external_data, size_threshold=256)
    return onnx.load(str(path))


def make_digits_vae(out: Path, x: np.ndarray) -> None:
    print("Digits VAE decoder (torch)")
    decoder, figures = train_digits_vae(x)
    print(
        f"    trained {VAE_EPOCHS} epochs: final epoch loss {figures['final_epoch_loss']:.3f} "
        f"(BCE + {VAE_BETA} KL per image); eval BCE/image {figures['eval_bce_per_image']:.3f}, "
        f"recon MSE {figures['eval_recon_mse']:.5f}, KL per latent dim {figures['eval_kl_per_dim']}"
    )
    w1, b1 = decoder_relu_layer(decoder)
    w2 = decoder[3].weight.detach().double().numpy()
    b2 = decoder[3].bias.detach().double().numpy()
    print(
        f"    folded hidden layer: singular values {np.linalg.svd(w1, compute_uv=False).round(3).tolist()}; "
        f"output layer rank {np.linalg.matrix_rank(w2)} of {w2.shape[1]}, smallest singular value "
        f"{np.linalg.svd(w2, compute_uv=False).min():.3f}"
    )

    rng = np.random.default_rng(VAE_OBS_SEED)
    prior = rng.standard_normal((2000, LATENT_DIM))
    prior_active = (prior @ w1.T + b1 > 0).sum(axis=1)
    print(
        f"    active hidden units on 2000 prior latents: min {prior_active.min()}, "
        f"median {int(np.median(prior_active))}, max {prior_active.max()} (of {HIDDEN}, k = {LATENT_DIM})"
    )
    hidden_ok = relu_check([(w1, b1)])

    def vae_check(z: np.ndarray) -> tuple[bool, list[int]]:
        # ReLU layer: enough active units; Sigmoid layer: enough unsaturated pixels to determine the hidden
        # layer from the logits of those pixels alone (saturated pixels carry almost no information).
        ok, active = hidden_ok(z)
        logits = w2 @ np.maximum(w1 @ z + b1, 0.0) + b2
        unsaturated = np.abs(logits) <= SIGMOID_LOGIT_LIMIT
        ok = ok and unsaturated.sum() >= HIDDEN + LATENT_DIM
        ok = ok and np.linalg.matrix_rank(w2[unsaturated]) == HIDDEN
        return ok, [*active, int(unsaturated.sum())]

    logits = np.maximum(prior @ w1.T + b1, 0.0) @ w2.T + b2
    unsat = (np.abs(logits) <= SIGMOID_LOGIT_LIMIT).sum(axis=1)
    print(
        f"    pixels in [1e-4, 1 - 1e-4] on the prior latents: min {unsat.min()}, median "
        f"{int(np.median(unsat))}, max {unsat.max()} (need {HIDDEN + LATENT_DIM} to accept a latent)"
    )
    picked, counts, rejected = pick_latents(lambda: rng.standard_normal(LATENT_DIM), vae_check, 1 + BATCH)
    arr = np.array(counts)
    print(
        f"    chosen latents: active hidden units z_true {arr[0, 0]}, batch min {arr[1:, 0].min()} median "
        f"{int(np.median(arr[1:, 0]))}; unsaturated pixels z_true {arr[0, 1]}, batch min {arr[1:, 1].min()} "
        f"median {int(np.median(arr[1:, 1]))}; rejected draws: {rejected}"
    )

    probe = np.random.default_rng(VAE_OBS_SEED + 1).standard_normal((5, LATENT_DIM)).astype(np.float32)
    for name, exporter in (("digits_vae_legacy", export_legacy), ("digits_vae_dynamo", export_dynamo)):
        path = out / f"{name}.onnx"
        model = exporter(decoder, path)
        size = path.stat().st_size
        data_path = path.with_name(path.name + ".data")
        extra = (
            f" + {data_path.name} ({data_path.stat().st_size / 1024:.1f} KiB)" if data_path.exists() else ""
        )
        print(
            f"  wrote {path.name} ({size / 1024:.1f} KiB){extra}: IR {model.ir_version}, "
            f"opset {model.opset_import[0].version}, producer {model.producer_name} {model.producer_version}"
        )
        print(f"    ops: {op_types(model)}")
        session = ort_session(model)
        err = check_against_torch(decoder, session, probe, name)
        print(f"    onnxruntime vs torch on 5 latents: max |diff| {err:.2e}")
        noise_rng = np.random.default_rng(VAE_OBS_SEED + 2)

        def gaussian_noise(batch: np.ndarray, noise_rng=noise_rng) -> np.ndarray:
            return noise_rng.normal(0.0, DIGITS_NOISE_SIGMA, size=batch.shape)

        stats = write_observations(out, name, session, picked[0], picked[1:], (1, 8, 8), gaussian_noise)
        print(f"    noisy batch: max|noise| {stats['noise_max_abs']:.3g}, rms {stats['noise_rms']:.3g}")


# --------------------------------------------------------------------------------------------------
# 3. MLPRegressor on digits, converted by skl2onnx


MLP_SEED = 0
MLP_OBS_SEED = 400


def make_digits_mlp(out: Path, x: np.ndarray) -> None:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.decomposition import PCA
    from sklearn.neural_network import MLPRegressor
    from sklearn.preprocessing import StandardScaler

    print("Digits MLPRegressor (scikit-learn, skl2onnx)")
    x64 = x.astype(np.float64)
    codes = PCA(n_components=LATENT_DIM, random_state=MLP_SEED).fit_transform(x64)
    codes = StandardScaler().fit_transform(codes).astype(np.float32)
    reg = MLPRegressor(
        hidden_layer_sizes=(HIDDEN,),
        activation="relu",
        solver="adam",
        alpha=1e-4,
        learning_rate_init=1e-3,
        max_iter=3000,
        tol=1e-7,
        n_iter_no_change=50,
        random_state=MLP_SEED,
    )
    reg.fit(codes, x64)
    pred = reg.predict(codes)
    mse = float(np.mean((pred - x64) ** 2))
    print(
        f"    trained {reg.n_iter_} iterations: final loss {reg.loss_:.5f} (half squared error + L2), "
        f"MSE {mse:.5f}, R^2 {reg.score(codes, x64):.3f}"
    )
    w1, b1 = reg.coefs_[0].T, reg.intercepts_[0]
    w2 = reg.coefs_[1].T
    hidden_active = (codes.astype(np.float64) @ w1.T + b1 > 0).sum(axis=1)
    dead = int(((codes.astype(np.float64) @ w1.T + b1) <= 0).all(axis=0).sum())
    print(
        f"    active hidden units on the 1797 digit codes: min {hidden_active.min()}, median "
        f"{int(np.median(hidden_active))}, max {hidden_active.max()} (of {HIDDEN}); "
        f"units never active: {dead}; output layer rank {np.linalg.matrix_rank(w2)} of {HIDDEN}"
    )

    onx = convert_sklearn(
        reg,
        name="digits_mlp",  # the graph name; skl2onnx would otherwise use a random uuid
        initial_types=[("z", FloatTensorType([None, LATENT_DIM]))],
        target_opset=17,
    )
    path = out / "digits_mlp_skl2onnx.onnx"
    save_model(onx, path)
    model = _lower_ir_if_needed(path)
    print(
        f"    IR {model.ir_version}, opset {model.opset_import[0].version}, producer "
        f"{model.producer_name} {model.producer_version}; output {model.graph.output[0].name}"
    )
    print(f"    ops: {op_types(model)}")
    session = ort_session(model)
    probe = codes[:32]
    got = ort_run(session, probe)
    print(f"    onnxruntime output shape for a batch of {len(probe)}: {got.shape}")
    expected = reg.predict(probe.astype(np.float64))
    err = float(np.abs(got.reshape(expected.shape) - expected).max())
    np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=0, atol=1e-5)
    print(f"    onnxruntime vs regressor.predict on {len(probe)} codes: max |diff| {err:.2e}")

    rng = np.random.default_rng(MLP_OBS_SEED)
    order = iter(rng.permutation(len(codes)))
    chosen: list[int] = []

    def next_code() -> np.ndarray:
        i = int(next(order))
        chosen.append(i)
        return codes[i].astype(np.float64)

    check = relu_check([(w1, b1)])
    picked, counts, rejected = pick_latents(next_code, check, 1 + BATCH)
    accepted = [i for i in chosen if check(codes[i].astype(np.float64))[0]]
    print(f"    digit indices used (z_true first): {accepted}")
    _report_active("the MLP", counts, rejected, [LATENT_DIM])
    noise_rng = np.random.default_rng(MLP_OBS_SEED + 1)

    def gaussian_noise(batch: np.ndarray) -> np.ndarray:
        return noise_rng.normal(0.0, DIGITS_NOISE_SIGMA, size=batch.shape)

    stats = write_observations(
        out, "digits_mlp_skl2onnx", session, picked[0], picked[1:], (64,), gaussian_noise
    )
    print(f"    noisy batch: max|noise| {stats['noise_max_abs']:.3g}, rms {stats['noise_rms']:.3g}")


# --------------------------------------------------------------------------------------------------
# 4. convolutional generators on 16x16 digits (torch GANs, a Keras decoder via tf2onnx)


CONV_LATENT = 16  # latent size of the convolutional digits generators
CONV_SIDE = 16  # the 8x8 digits are upsampled (bilinear) to 16x16
GAN_SEED = 500
GAN_EPOCHS = 60
GAN_BATCH = 64
GAN_LR = 2e-4  # the DCGAN recipe: Adam(2e-4, betas (0.5, 0.999)), BCE on logits
CONV_OBS_SEED = 600
KERAS_SEED = 700
KERAS_EPOCHS = 40


def load_digits_16(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The digits as (1797, 1, 16, 16) float32 in [-1, 1] (bilinear upsampling), and their labels."""
    import torch
    from sklearn.datasets import load_digits

    images = torch.from_numpy(x.reshape(-1, 1, 8, 8))
    big = torch.nn.functional.interpolate(
        images, size=(CONV_SIDE, CONV_SIDE), mode="bilinear", align_corners=False
    )
    return (big.numpy() * 2.0 - 1.0).astype(np.float32), load_digits().target.astype(np.int64)


def conv_generators():
    """The torch generators, by name: (module, conditional?, what it is)."""
    from torch import nn

    k, c = CONV_LATENT, 10

    class DcganLatent4d(nn.Sequential):
        """z (N, k, 1, 1) -> ConvT 4x4 -> 4x4 -> ConvT s2 -> 8x8 -> ConvT s2 -> 16x16, BN + ReLU, Tanh."""

        def __init__(self) -> None:
            super().__init__(
                nn.ConvTranspose2d(k, 64, 4, 1, 0, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(),
                nn.ConvTranspose2d(64, 32, 4, 2, 1, bias=False),
                nn.BatchNorm2d(32),
                nn.ReLU(),
                nn.ConvTranspose2d(32, 1, 4, 2, 1),
                nn.Tanh(),
            )

    def dense_stem(inputs: int) -> list:
        return [
            nn.Linear(inputs, 64 * 4 * 4),
            nn.BatchNorm1d(64 * 4 * 4),
            nn.ReLU(),
            nn.Unflatten(1, (64, 4, 4)),
        ]

    def transpose_head() -> list:
        return [
            nn.ConvTranspose2d(64, 32, 4, 2, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 1, 4, 2, 1),
            nn.Tanh(),
        ]

    class DcganLinear(nn.Sequential):
        """z (N, k) -> Linear -> BN -> ReLU -> (64, 4, 4) -> the two ConvT blocks."""

        def __init__(self) -> None:
            super().__init__(*dense_stem(k), *transpose_head())

    class UpsampleConv(nn.Sequential):
        """z (N, k) -> Linear -> (64, 4, 4) -> [Upsample x2 nearest -> Conv 3x3] x 2, BN + ReLU, Tanh."""

        def __init__(self) -> None:
            super().__init__(
                *dense_stem(k),
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(64, 32, 3, padding=1, bias=False),
                nn.BatchNorm2d(32),
                nn.ReLU(),
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(32, 1, 3, padding=1),
                nn.Tanh(),
            )

    class Conditional(nn.Module):
        """(z (N, k), label (N, 10) one-hot) -> concatenated -> Linear -> the two ConvT blocks."""

        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(*dense_stem(k + c), *transpose_head())

        def forward(self, z, label):
            return self.body(torch_cat([z, label]))

    return {
        "digits_dcgan": (DcganLatent4d, False, "ConvTranspose2d blocks on a (N, 16, 1, 1) latent"),
        "digits_dcgan_linear": (DcganLinear, False, "Linear + Unflatten, then ConvTranspose2d blocks"),
        "digits_upconv": (UpsampleConv, False, "Linear + Unflatten, then nn.Upsample + Conv2d blocks"),
        "digits_cdcgan": (Conditional, True, "one-hot label concatenated with the noise"),
    }


def torch_cat(parts):
    import torch

    return torch.cat(parts, dim=1)


def discriminator(conditional: bool):
    """A small DCGAN discriminator on 16x16 images (the label, if any, as 10 constant channels)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1 + (10 if conditional else 0), 32, 4, 2, 1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(32, 64, 4, 2, 1, bias=False),
        nn.BatchNorm2d(64),
        nn.LeakyReLU(0.2),
        nn.Conv2d(64, 1, 4, 1, 0),
        nn.Flatten(),
    )


def gan_latent(torch, n: int, four_d: bool, gen):
    z = torch.randn((n, CONV_LATENT), generator=gen)
    return z.reshape(n, CONV_LATENT, 1, 1) if four_d else z


def train_gan(name: str, images: np.ndarray, labels: np.ndarray):
    """Train one generator with the DCGAN recipe; return it in eval mode and training figures."""
    import torch
    from torch import nn

    make, conditional, _ = conv_generators()[name]
    torch.manual_seed(GAN_SEED)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g, d = make(), discriminator(conditional)
        opt_g = torch.optim.Adam(g.parameters(), lr=GAN_LR, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(d.parameters(), lr=GAN_LR, betas=(0.5, 0.999))
        loss = nn.BCEWithLogitsLoss()
        data = torch.from_numpy(images)
        onehot = torch.nn.functional.one_hot(torch.from_numpy(labels), 10).float()
        gen = torch.Generator().manual_seed(GAN_SEED)
        four_d = name == "digits_dcgan"
        n = data.shape[0]
        d_loss = g_loss = float("nan")

        def with_label(x, y):
            return (
                torch.cat([x, y[:, :, None, None].expand(-1, -1, CONV_SIDE, CONV_SIDE)], 1)
                if conditional
                else x
            )

        for _epoch in range(GAN_EPOCHS):
            g.train()
            d.train()
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n - 1, GAN_BATCH):
                idx = perm[start : start + GAN_BATCH]
                if len(idx) < 2:
                    continue
                real, y = data[idx], onehot[idx]
                z = gan_latent(torch, len(idx), four_d, gen)
                fake = g(z, y) if conditional else g(z)
                ones, zeros = torch.ones(len(idx), 1), torch.zeros(len(idx), 1)
                opt_d.zero_grad()
                ld = loss(d(with_label(real, y)), ones) + loss(d(with_label(fake.detach(), y)), zeros)
                ld.backward()
                opt_d.step()
                opt_g.zero_grad()
                lg = loss(d(with_label(fake, y)), ones)
                lg.backward()
                opt_g.step()
                d_loss, g_loss = float(ld.detach()), float(lg.detach())
        g.eval()
        with torch.no_grad():
            z = gan_latent(torch, 500, four_d, gen)
            y = onehot[torch.randint(0, n, (500,), generator=gen)]
            samples = (g(z, y) if conditional else g(z)).reshape(500, -1).numpy()
        # how close generated images come to real digits, against how close real digits come to each other
        flat = images.reshape(n, -1)
        nearest = np.sqrt(((samples[:, None, :] - flat[None, :, :]) ** 2).mean(axis=2)).min(axis=1)
        figures = {
            "final_d_loss": d_loss,
            "final_g_loss": g_loss,
            "sample_rms_to_nearest_digit": float(np.median(nearest)),
            "sample_pixel_std": float(samples.std(axis=0).mean()),
        }
        return g, figures
    finally:
        torch.set_num_threads(threads)


def export_torch_generator(
    module, example: tuple, path: Path, dynamo: bool, input_names: list[str]
) -> onnx.ModelProto:
    """Export with the legacy exporter (opset 17, dynamic batch) or the dynamo one (sidecar data)."""
    import torch

    if dynamo:
        data_path = path.with_name(path.name + ".data")
        if data_path.exists():
            data_path.unlink()
        torch.onnx.export(
            module,
            example,
            str(path),
            dynamo=True,
            input_names=input_names,
            output_names=["image"],
            dynamic_shapes=tuple({0: torch.export.Dim("batch")} for _ in example),
            external_data=True,
        )
        return _lower_ir_if_needed(path, external_data=data_path.name if data_path.exists() else None)
    torch.onnx.export(
        module,
        example,
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=input_names,
        output_names=["image"],
        dynamic_axes={**{n: {0: "batch"} for n in input_names}, "image": {0: "batch"}},
    )
    return _lower_ir_if_needed(path)


def make_conv_generators(out: Path, x: np.ndarray) -> None:
    """Four torch GANs, each exported twice, and the Keras decoder through tf2onnx."""
    import torch

    images, labels = load_digits_16(x)
    print(f"Convolutional digits generators ({images.shape[0]} digits upsampled to {CONV_SIDE}x{CONV_SIDE})")
    for name, (_, conditional, what) in conv_generators().items():
        generator, figures = train_gan(name, images, labels)
        print(
            f"  {name} ({what}): {GAN_EPOCHS} epochs, final D loss {figures['final_d_loss']:.3f}, G loss "
            f"{figures['final_g_loss']:.3f}; 500 samples: median RMS to the nearest digit "
            f"{figures['sample_rms_to_nearest_digit']:.3f}, mean pixel std {figures['sample_pixel_std']:.3f}"
        )
        four_d = name == "digits_dcgan"
        shape = (2, CONV_LATENT, 1, 1) if four_d else (2, CONV_LATENT)
        example = (torch.zeros(shape),) + ((torch.eye(10)[:2],) if conditional else ())
        names = ["z", "label"] if conditional else ["z"]
        z_true = np.random.default_rng(CONV_OBS_SEED).standard_normal(CONV_LATENT).astype(np.float32)
        label_class = 3
        label = np.eye(10, dtype=np.float32)[label_class][None]
        for exporter in ("legacy", "dynamo"):
            path = out / f"{name}_{exporter}.onnx"
            model = export_torch_generator(generator, example, path, exporter == "dynamo", names)
            data_path = path.with_name(path.name + ".data")
            extra = (
                f" + {data_path.name} ({data_path.stat().st_size / 1024:.1f} KiB)"
                if data_path.exists()
                else ""
            )
            print(
                f"    wrote {path.name} ({path.stat().st_size / 1024:.1f} KiB){extra}: IR {model.ir_version}, "
                f"opset {model.opset_import[0].version}; ops: {describe_ops(model)}"
            )
            session = ort_session(model)
            feeds = {}
            if conditional:
                np.save(out / f"{path.stem}.fix.label.npy", label, allow_pickle=False)
                feeds = {"label": label}
            run = _conv_runner(session, four_d, feeds)
            probe = (
                np.random.default_rng(CONV_OBS_SEED + 1).standard_normal((5, CONV_LATENT)).astype(np.float32)
            )
            with torch.no_grad():
                zt = torch.from_numpy(probe.reshape((5, CONV_LATENT, 1, 1) if four_d else (5, CONV_LATENT)))
                expected = (
                    generator(zt, torch.from_numpy(np.repeat(label, 5, 0))) if conditional else generator(zt)
                ).numpy()
            got = run(probe)
            np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=0, atol=1e-5)
            print(
                f"    onnxruntime vs torch on 5 latents: max |diff| {np.abs(got.reshape(expected.shape) - expected).max():.2e}"
            )
            # one observation only: the batch files of the dense models feed inversion tests, and
            # inverting these sparse, contracting layers is not done yet
            save_array(out / f"{path.stem}.z_true.npy", z_true)
            save_array(out / f"{path.stem}.obs.npy", run(z_true[None]).reshape(1, CONV_SIDE, CONV_SIDE))
    make_keras_decoder(out, images)


def _conv_runner(session, four_d: bool, feeds: dict):
    def run(z: np.ndarray) -> np.ndarray:
        z = np.ascontiguousarray(z, dtype=np.float32)
        z = z.reshape(len(z), CONV_LATENT, 1, 1) if four_d else z
        extra = {k: np.repeat(v, len(z), axis=0) for k, v in feeds.items()}
        return session.run(None, {"z": z, **extra})[0]

    return run


def make_keras_decoder(out: Path, images: np.ndarray) -> None:
    """A Keras decoder (Dense, Reshape, BatchNormalization, Conv2DTranspose) trained as an autoencoder,
    converted by tf2onnx from a tf.function (``tf2onnx.convert.from_keras`` fails under Keras 3)."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import keras
        import tensorflow as tf
        import tf2onnx
    except ImportError as exc:
        print(f"  keras decoder skipped: {exc}")
        return
    keras.utils.set_random_seed(KERAS_SEED)
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    k = CONV_LATENT
    decoder = keras.Sequential(
        [
            keras.Input((k,)),
            keras.layers.Dense(4 * 4 * 32),
            keras.layers.Reshape((4, 4, 32)),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Conv2DTranspose(16, 4, strides=2, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Conv2DTranspose(1, 4, strides=2, padding="same", activation="tanh"),
        ],
        name="decoder",
    )
    encoder = keras.Sequential(
        [
            keras.Input((CONV_SIDE, CONV_SIDE, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(k),
        ],
        name="encoder",
    )
    autoencoder = keras.Sequential([encoder, decoder])
    autoencoder.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    nhwc = np.transpose(images, (0, 2, 3, 1))
    history = autoencoder.fit(nhwc, nhwc, epochs=KERAS_EPOCHS, batch_size=64, shuffle=True, verbose=0)
    print(
        f"  keras decoder (keras {keras.__version__}, tensorflow {tf.__version__}, tf2onnx {tf2onnx.__version__}): "
        f"{KERAS_EPOCHS} epochs as an autoencoder, final MSE {history.history['loss'][-1]:.4f}"
    )
    signature = [tf.TensorSpec((None, k), tf.float32, name="z")]
    try:
        tf2onnx.convert.from_keras(decoder, input_signature=signature, opset=17)
        print("    tf2onnx.convert.from_keras worked")
    except Exception as exc:  # observed: KeyError 'keras_tensor_...' with Keras 3
        print(f"    tf2onnx.convert.from_keras failed ({type(exc).__name__}: {exc}); using from_function")
    model, _ = tf2onnx.convert.from_function(
        tf.function(lambda z: decoder(z, training=False)), input_signature=signature, opset=17
    )
    path = out / "digits_keras_tf2onnx.onnx"
    onnx.save(model, str(path))
    model = _lower_ir_if_needed(path)
    print(
        f"    wrote {path.name} ({path.stat().st_size / 1024:.1f} KiB): IR {model.ir_version}; ops: {describe_ops(model)}"
    )
    session = ort_session(model)
    rng = np.random.default_rng(KERAS_SEED + 1)
    probe = rng.standard_normal((5, k)).astype(np.float32)
    expected = decoder(probe, training=False).numpy()
    got = ort_run(session, probe)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    print(f"    onnxruntime vs keras on 5 latents: max |diff| {np.abs(got - expected).max():.2e}")


# --------------------------------------------------------------------------------------------------
# final check


def check_outputs(out: Path) -> None:
    """Every file under the size limit; every model loads in onnxruntime from inlined bytes and runs.

    Inputs other than the first take the values in ``<model>.fix.<input>.npy`` (conditional models).
    """
    print("Check")
    for path in sorted(out.iterdir()):
        if path.is_file() and path.stat().st_size > MAX_FILE_BYTES:
            raise AssertionError(f"{path.name} is {path.stat().st_size} bytes, over the 2 MB limit")
    for path in sorted(out.glob("*.onnx")):
        model = onnx.load(str(path))  # external data inlined
        session = ort_session(model)
        inp, *others = session.get_inputs()
        latent_shape = [d for d in inp.shape[1:]]
        k = int(np.prod(latent_shape))

        def run(z: np.ndarray, session=session, inp=inp, others=others, latent_shape=latent_shape, path=path):
            feeds = {inp.name: np.ascontiguousarray(z, np.float32).reshape(len(z), *latent_shape)}
            for other in others:
                value = np.load(out / f"{path.stem}.fix.{other.name}.npy", allow_pickle=False)
                feeds[other.name] = np.repeat(value, len(z), axis=0)
            return session.run(None, feeds)[0]

        z = np.random.default_rng(0).standard_normal((3, k)).astype(np.float32)
        y = run(z)
        print(
            f"  {path.name}: input {inp.name} {inp.shape} -> output {session.get_outputs()[0].name} {y.shape}"
        )
        obs = out / f"{path.stem}.obs.npy"
        if obs.exists():
            z_true = np.load(out / f"{path.stem}.z_true.npy", allow_pickle=False)
            again = run(z_true[None, :]).reshape(np.load(obs, allow_pickle=False).shape)
            if not np.array_equal(again, np.load(obs, allow_pickle=False)):
                raise AssertionError(f"{obs.name} does not match the model at z_true")


SECTIONS = ("gaussian", "vae", "mlp", "conv")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("sample_models"), help="output folder")
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="make only these sections"
    )
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    if "gaussian" in args.only:
        make_gaussian_models(out)
    x = load_digits_unit()
    if "vae" in args.only:
        make_digits_vae(out, x)
    if "mlp" in args.only:
        make_digits_mlp(out, x)
    if "conv" in args.only:
        make_conv_generators(out, x)
    check_outputs(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
