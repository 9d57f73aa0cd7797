"""A real Dask cluster (``distributed.LocalCluster``: two worker processes): the same results as the
local run, bit for bit; a worker killed mid-run is replaced and the run completes with the same
results; streamed runs, audit and the command line on the cluster."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from scale_helpers import MODEL_784, assert_same_results, observations_784, run_cli

import onnxinv
from onnxinv.stream import invert_to_folder

distributed = pytest.importorskip("distributed")

COUNT = 300


@pytest.fixture(scope="module")
def cluster():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50
        ) as local,
        distributed.Client(local) as client,
    ):
        client.wait_for_workers(2, timeout=120)
        yield local, client


@pytest.fixture(scope="module")
def batch():
    generator, z, x = observations_784(COUNT, seed=21)
    return generator, x, onnxinv.invert(generator, x, workers=1)


def _worker_pids(client) -> dict[str, int]:
    return client.run(os.getpid)


def test_the_cluster_gives_the_local_results_bit_for_bit(cluster, batch):
    _, client = cluster
    generator, x, reference = batch
    on_client = onnxinv.invert(generator, x, executor=client)
    assert on_client.workers == 2
    assert_same_results(on_client, reference)
    assert_same_results(
        onnxinv.invert(generator, x, executor=client.get_executor(), chunk_size=13), reference
    )

    def installed() -> list[str]:  # nested: Dask ships it by value to the workers
        from onnxinv.inversion import dask_engine

        return sorted(dask_engine._GENERATORS)

    # the plugin installed the generator on each worker and removed it after the runs
    assert client.run(installed) == {address: [] for address in _worker_pids(client)}


def test_the_generator_is_installed_once_per_worker(cluster, batch):
    _, client = cluster
    generator, x, _ = batch
    from onnxinv.inversion import dask_engine

    seen: dict[str, set[int]] = {}

    def probe(generator_, count):  # runs as a chunk: records which generator object it was given
        from distributed import get_worker

        seen_here = (get_worker().address, id(generator_))
        return [seen_here] * count

    from onnxinv.inversion import parallel

    pairs = parallel.map_chunks(generator, probe, [(1,)] * 12, executor=client)
    for address, object_id in pairs:
        seen.setdefault(address, set()).add(object_id)
    assert all(len(ids) == 1 for ids in seen.values()), seen  # one object per worker, every chunk
    assert dask_engine._USERS == {}


def test_a_worker_killed_mid_run_is_replaced_and_the_results_do_not_change(cluster, batch):
    _, client = cluster
    generator, x, reference = batch
    before = _worker_pids(client)
    killed: list[int] = []

    def kill_one_worker(count: int) -> None:
        if not killed:  # after the first chunk: the other chunks are queued or running
            pid = sorted(before.values())[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    result = onnxinv.invert(generator, x, executor=client, chunk_size=10, progress=kill_one_worker)
    assert killed
    assert_same_results(result, reference)
    client.wait_for_workers(2, timeout=120)
    after = _worker_pids(client)
    assert killed[0] not in after.values()  # the nanny started a new worker process


def test_a_streamed_run_on_the_cluster_writes_the_local_results(cluster, batch, tmp_path):
    _, client = cluster
    generator, x, reference = batch
    np.save(tmp_path / "obs.npy", x)
    result = invert_to_folder(
        generator, tmp_path / "obs.npy", tmp_path / "out", executor=client, chunk_size=40
    )
    assert result.engine == "dask" and result.counts == reference.counts
    assert np.array_equal(np.load(tmp_path / "out" / "z.npy"), reference.model_z())
    assert list(np.load(tmp_path / "out" / "verdicts.npy")) == [v.value for v in reference.verdicts]


def test_audit_and_the_command_line_on_the_cluster(cluster, batch, tmp_path, monkeypatch):
    local, client = cluster
    generator, x, reference = batch
    on_cluster = onnxinv.audit(generator, samples=30, executor=client)
    here = onnxinv.audit(generator, samples=30, workers=1)
    assert on_cluster.inversion_verdicts == here.inversion_verdicts and on_cluster.status == here.status
    np.save(tmp_path / "obs.npy", x[:40])
    done = run_cli("invert", MODEL_784, tmp_path / "obs.npy", "-o", tmp_path / "z.npy", "-q",
               "--scheduler", local.scheduler_address)  # fmt: skip
    assert done.exit_code == 0, done.stderr
    assert np.array_equal(np.load(tmp_path / "z.npy"), reference.model_z()[:40])
    monkeypatch.setenv("ONNXINV_SCHEDULER", local.scheduler_address)
    done = run_cli("invert", MODEL_784, tmp_path / "obs.npy", "--out-dir", tmp_path / "out", "--json")
    assert done.exit_code == 0, done.stderr
    assert '"engine": "dask"' in done.stdout
    assert np.array_equal(np.load(tmp_path / "out" / "z.npy"), reference.model_z()[:40])
