"""``onnxinv invert``: z files, summaries, JSON, PNG, atomic writes and exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import observations, run, save_generator

import onnxinv
from onnxinv import files


def test_single_observation_writes_z_next_to_the_cwd(tmp_path, relu_model, monkeypatch):
    z_true, x = observations(relu_model)
    np.save(tmp_path / "obs.npy", x)
    monkeypatch.chdir(tmp_path)
    result = run("invert", relu_model, tmp_path / "obs.npy", "--method", "exact")
    assert result.exit_code == 0, result.stdout + result.stderr
    z = np.load(tmp_path / "obs.z.npy")  # default: <OBS stem>.z.npy in the current folder
    assert z.shape == (1, 5) and z.dtype == np.float32  # the model's input [N, 5], float32
    np.testing.assert_allclose(z[0], z_true, rtol=1e-3, atol=1e-4)
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert lines["method"] == "exact"
    assert lines["verdict"] == "unique (certified-layerwise)"
    assert lines["evidence"] == "layerwise"
    assert "relative l2" in lines["residual"] and "onnxruntime" in lines["residual"]
    assert float(lines["residual"].split()[0]) < 1e-5
    assert lines["time"].endswith(" s")
    assert "obs.z.npy (1, 5) float32" in lines["z"]
    assert result.stderr == ""  # no progress bar for one observation


def test_batch_writes_n_by_k_float32_and_totals(tmp_path, relu_model):
    z_true, x = observations(relu_model, count=6)
    np.save(tmp_path / "batch.npy", x.reshape(6, 1, 120))  # extra dims are fine
    out = tmp_path / "out" / "z.npy"
    out.parent.mkdir()
    result = run("invert", relu_model, tmp_path / "batch.npy", "-o", out)
    assert result.exit_code == 0, result.stdout + result.stderr
    z = np.load(out)
    assert z.shape == (6, 5) and z.dtype == np.float32
    np.testing.assert_allclose(z, z_true, rtol=1e-3, atol=1e-4)
    assert "6 observations: 6 unique, 0 not unique, 0 fits, 0 no preimage, 0 not found" in result.stdout
    table = [line.split() for line in result.stdout.splitlines()]
    assert table[0][:3] == ["#", "method", "verdict"]
    assert [row[0] for row in table[1:7]] == ["0", "1", "2", "3", "4", "5"]
    assert result.stderr == ""  # stderr is not a terminal: no progress bar


def test_quiet_prints_totals_only(tmp_path, relu_model):
    _, x = observations(relu_model, count=3)
    np.save(tmp_path / "batch.npy", x)
    result = run("invert", relu_model, tmp_path / "batch.npy", "-o", tmp_path / "z.npy", "--quiet")
    assert result.exit_code == 0
    assert (
        result.stdout.splitlines()[0]
        == "3 observations: 3 unique, 0 not unique, 0 fits, 0 no preimage, 0 not found"
    )
    assert "#" not in result.stdout


def test_progress_bar_on_a_terminal_inverts_in_chunks(tmp_path, relu_model, monkeypatch):
    z_true, x = observations(relu_model, count=4)
    np.save(tmp_path / "batch.npy", x)
    monkeypatch.setattr("onnxinv.cli._is_terminal", lambda stream: True)
    result = run("invert", relu_model, tmp_path / "batch.npy", "-o", tmp_path / "z.npy")
    assert result.exit_code == 0
    assert "inverting" in result.stderr
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), z_true, rtol=1e-3, atol=1e-4)
    quiet = run("invert", relu_model, tmp_path / "batch.npy", "-o", tmp_path / "z2.npy", "-q")
    assert quiet.stderr == ""


def test_json_document(tmp_path, relu_model):
    _, x = observations(relu_model, count=2)
    np.save(tmp_path / "batch.npy", x)
    result = run("invert", relu_model, tmp_path / "batch.npy", "-o", tmp_path / "z.npy", "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["count"] == 2 and doc["single"] is False and doc["z_shape"] == [2, 5]
    assert doc["verdicts"] == {"unique": 2, "not unique": 0, "fits": 0, "no preimage": 0, "not found": 0}
    assert doc["output"] == str(tmp_path / "z.npy")
    first = doc["results"][0]
    assert first["verdict"] == "unique" and len(first["z"]) == 5
    assert first["success"] is True and first["evidence"]["kind"] == "layerwise"
    assert [step["layer"] for step in first["steps"]] == [0, 1]
    np.testing.assert_allclose(np.load(tmp_path / "z.npy")[0], first["z"], rtol=1e-6)


def test_png_comparison_is_written_and_readable(tmp_path, image_model):
    _, x = observations(image_model)
    np.save(tmp_path / "img.npy", x.reshape(1, 8, 8))
    png = tmp_path / "cmp.png"
    result = run("invert", image_model, tmp_path / "img.npy", "-o", tmp_path / "z.npy", "--png", png)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert f"png       written to {png}" in result.stdout
    pixels, max_value = files.read_png(png)
    assert max_value == 255
    assert pixels.shape == (64, 3 * 64 + 2 * 4, 1)  # 8x8 scaled by 8, three panels, two gaps
    obs_panel, rec_panel = pixels[:, :64, 0], pixels[:, 68:132, 0]
    expected = files.to_display(x.reshape(8, 8), 0.0, 1.0)
    np.testing.assert_array_equal(obs_panel[::8, ::8], expected)
    assert np.abs(obs_panel.astype(int) - rec_panel.astype(int)).max() <= 1


def test_png_observation_is_read_for_image_models(tmp_path, image_model):
    _, x = observations(image_model)
    files.write_png(tmp_path / "digit.png", files.to_display(x.reshape(8, 8), 0.0, 1.0))
    result = run(
        "invert",
        image_model,
        tmp_path / "digit.png",
        "-o",
        tmp_path / "z.npy",
        "--method",
        "linf",
        "--noise",
        "0.003",
    )
    assert result.exit_code in (0, 3), result.stderr
    assert np.load(tmp_path / "z.npy").shape == (1, 4)
    doc = json.loads(
        run("invert", image_model, tmp_path / "digit.png", "-o", tmp_path / "z.npy", "--json").stdout
    )
    assert doc["single"] is True and doc["observations"].endswith("digit.png")


def test_png_for_a_flat_model_is_refused_before_inverting(tmp_path):
    from cli_helpers import save_generator

    flat = save_generator(tmp_path, "flat.onnx", [3, 20, 50])
    _, x = observations(flat)
    np.save(tmp_path / "x.npy", x)
    result = run("invert", flat, tmp_path / "x.npy", "-o", tmp_path / "z.npy", "--png", tmp_path / "p.png")
    assert result.exit_code == 1
    assert "--png" in result.stderr and "not image-shaped" in result.stderr
    assert not (tmp_path / "z.npy").exists() and not (tmp_path / "p.png").exists()


def test_no_preimage_is_exit_3(tmp_path, relu_model):
    np.save(tmp_path / "neg.npy", -np.ones(120, np.float32))  # a ReLU output is never negative
    result = run("invert", relu_model, tmp_path / "neg.npy", "-o", tmp_path / "z.npy", "--method", "exact")
    assert result.exit_code == 3, result.stdout + result.stderr
    assert "verdict   no preimage (infeasible-last-layer)" in result.stdout
    assert "evidence  layer-lp" in result.stdout


def test_not_found_is_exit_3_and_fits_is_exit_0(tmp_path):
    from cli_helpers import save_generator

    from onnxinv.building import random_generator_layers

    model = save_generator(tmp_path, "m.onnx", [4, 20, 100, 60])
    layers = random_generator_layers([4, 20, 100, 60], rng=0)
    u = np.abs(np.random.default_rng(1).normal(size=100))  # a hidden value no latent reaches
    np.save(tmp_path / "far.npy", layers[2].forward(u).astype(np.float32))
    result = run("invert", model, tmp_path / "far.npy", "-o", tmp_path / "z.npy", "--method", "exact")
    assert result.exit_code == 3 and "verdict   not found (no-fit)" in result.stdout, result.stdout


def test_recon_writes_the_onnxruntime_reconstruction(tmp_path, relu_model):
    from onnxinv.loader import load

    _, x = observations(relu_model, count=2)
    np.save(tmp_path / "batch.npy", x)
    rec = tmp_path / "rec.npy"
    result = run("invert", relu_model, tmp_path / "batch.npy", "-o", tmp_path / "z.npy", "--recon", rec)
    assert result.exit_code == 0 and f"recon     written to {rec}" in result.stdout
    values = np.load(rec)
    assert values.shape == (2, 120) and values.dtype == np.float32
    z = np.load(tmp_path / "z.npy")
    np.testing.assert_allclose(values, load(relu_model).run_onnx(z), rtol=1e-6, atol=1e-6)


def test_failed_run_leaves_no_file_and_keeps_an_existing_one(tmp_path, relu_model, monkeypatch):
    np.save(tmp_path / "wrong.npy", np.zeros(7, np.float32))
    result = run("invert", relu_model, tmp_path / "wrong.npy", "-o", tmp_path / "new.npy")
    assert result.exit_code == 1
    assert "wrong.npy" in result.stderr and "120 values" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "new.npy").exists()

    # an existing output survives a run that fails in the middle of the inversion
    _, x = observations(relu_model, count=3)
    np.save(tmp_path / "batch.npy", x)
    existing = tmp_path / "keep.npy"
    existing.write_bytes(b"previous result")

    def explode(*args, **kwargs):
        raise onnxinv.SolverError("HiGHS could not run (simulated)")

    monkeypatch.setattr("onnxinv.inversion.invert", explode)
    failed = run("invert", relu_model, tmp_path / "batch.npy", "-o", existing)
    assert failed.exit_code == 1 and "simulated" in failed.stderr
    assert existing.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_mask_leaves_entries_out(tmp_path, relu_model):
    z_true, x = observations(relu_model)
    mask = np.ones(120, bool)
    mask[::4] = False
    x = x.copy()
    x[~mask] = np.nan  # unobserved entries may hold anything
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "mask.npy", mask)
    result = run(
        "invert", relu_model, tmp_path / "x.npy", "--mask", tmp_path / "mask.npy", "-o", tmp_path / "z.npy"
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    np.testing.assert_allclose(np.load(tmp_path / "z.npy")[0], z_true, rtol=1e-3, atol=1e-4)
    unmasked = run("invert", relu_model, tmp_path / "x.npy", "-o", tmp_path / "z2.npy")
    assert unmasked.exit_code == 1 and "NaN" in unmasked.stderr and "x.npy" in unmasked.stderr


@pytest.mark.parametrize("args", [["--method", "magic"], ["--noise", "-1"], []])
def test_usage_errors_are_exit_2(tmp_path, relu_model, args):
    np.save(tmp_path / "x.npy", np.zeros(120, np.float32))
    argv = ["invert", relu_model, tmp_path / "x.npy", *args] if args else ["invert", relu_model]
    assert run(*argv).exit_code == 2


def test_progress_callback_of_the_api_drives_the_bar(tmp_path, relu_model, monkeypatch):
    import onnxinv.inversion as inversion

    real = inversion.invert
    calls: list[int] = []

    def with_progress(generator, x, *args, progress=None, **kwargs):
        result = real(generator, x, *args, **kwargs)
        for _ in result.results:
            calls.append(1)
            progress(1)
        return result

    _, x = observations(relu_model, count=3)
    np.save(tmp_path / "batch.npy", x)
    monkeypatch.setattr("onnxinv.cli._is_terminal", lambda stream: True)
    monkeypatch.setattr("onnxinv.inversion.invert", with_progress)
    result = run("invert", relu_model, tmp_path / "batch.npy", "-o", tmp_path / "z.npy")
    assert result.exit_code == 0, result.stderr
    assert calls == [1, 1, 1] and "inverting" in result.stderr
    assert np.load(tmp_path / "z.npy").shape == (3, 5)


def test_png_draws_at_most_32_observations(tmp_path, image_model):
    _, x = observations(image_model, count=33)
    np.save(tmp_path / "many.npy", x)
    png = tmp_path / "many.png"
    result = run("invert", image_model, tmp_path / "many.npy", "-o", tmp_path / "z.npy", "--png", png, "-q")
    assert result.exit_code == 0, result.stderr
    assert "(the first 32 of 33 observations)" in result.stdout
    pixels, _ = files.read_png(png)
    assert pixels.shape[0] == 32 * 64 + 31 * 4  # 32 rows of 8x8 images scaled by 8, with gaps


def test_missing_output_folder_is_refused_before_inverting(tmp_path, relu_model, monkeypatch):
    _, x = observations(relu_model)
    np.save(tmp_path / "x.npy", x)

    def never(*args, **kwargs):
        raise AssertionError("invert must not run")

    monkeypatch.setattr("onnxinv.inversion.invert", never)
    result = run("invert", relu_model, tmp_path / "x.npy", "-o", tmp_path / "nowhere" / "z.npy")
    assert result.exit_code == 1
    assert "nowhere" in result.stderr and "does not exist" in result.stderr


def test_measure_inverts_compressed_measurements(tmp_path, relu_model):
    from onnxinv.loader import load

    z_true, x = observations(relu_model, count=2)
    a = np.random.default_rng(4).standard_normal((40, 120)) / np.sqrt(40)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "y.npy", (x.astype(np.float64) @ a.T).astype(np.float32))
    result = run(
        "invert",
        relu_model,
        tmp_path / "y.npy",
        "--measure",
        tmp_path / "a.npy",
        "-o",
        tmp_path / "z.npy",
        "--flat",
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    z = np.load(tmp_path / "z.npy")
    np.testing.assert_allclose(z, z_true, rtol=1e-3, atol=1e-3)
    assert np.allclose(load(relu_model).run_onnx(z) @ a.T, x @ a.T, rtol=1e-3, atol=1e-3)

    usage = run(
        "invert", relu_model, tmp_path / "y.npy", "--measure", tmp_path / "a.npy", "--method", "exact"
    )
    assert usage.exit_code == 2 and "cannot start from measurements" in usage.stderr
    np.save(tmp_path / "bad.npy", a[:, :7])
    bad = run(
        "invert", relu_model, tmp_path / "y.npy", "--measure", tmp_path / "bad.npy", "-o", tmp_path / "z2.npy"
    )
    assert bad.exit_code == 1 and "bad.npy" in bad.stderr and "(m, 120)" in bad.stderr
    assert not (tmp_path / "z2.npy").exists()


def test_latent_box_lets_whole_network_certificates_count(tmp_path):
    """2-8-8-16: the second hidden layer contracts, so only the MILP can certify; its certificate
    holds inside its search box, which counts only once the user states --latent-box."""
    model = save_generator(tmp_path, "boxed.onnx", [2, 8, 8, 16], rng=2)
    _, x = observations(model, seed=0)
    np.save(tmp_path / "x.npy", x)
    common = ("invert", model, tmp_path / "x.npy", "--json", "--milp-time", "60", "-o", tmp_path / "z.npy")
    plain = json.loads(run(*common).stdout)["results"][0]
    assert plain["verdict"] == "fits" and plain["evidence"]["kind"] == "none"
    boxed = run(*common, "--latent-box", "10")
    assert boxed.exit_code == 0, boxed.stderr
    document = json.loads(boxed.stdout)["results"][0]
    assert document["verdict"] == "unique" and document["evidence"]["kind"] == "milp"
    assert document["evidence"]["box"] == 10.0
    for bad in ("0", "-1", "inf", "x"):
        assert run(*common, "--latent-box", bad).exit_code == 2
    assert run(*common, "--milp-time", "0").exit_code == 2
