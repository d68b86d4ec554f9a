"""Shared fixtures: one Ray runtime for the whole session, the real clips, and synthetic DCASE trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("STETHOSCOPE_SHARED_DATA", ROOT.parent / "shared" / "data"))
DCASE2020 = SHARED_DATA / "dcase2020_task2_dev_sample"
DCASE2023 = SHARED_DATA / "dcase2023_task2_dev_sample"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

# The S3 test server's address and fake credentials, set before any test starts Ray so its workers inherit them
# (tests/s3_server.py). The server itself starts only for the tests that use the s3_server fixture.
from s3_server import MotoS3, configure_environment, reserve_port  # noqa: E402  (tests/ is on sys.path)

S3_PORT = reserve_port()
configure_environment(S3_PORT)


@pytest.fixture()
def one_torch_thread():
    """One intra-op torch thread and torch seed 0 for the test (tiny tensors: faster, and on a loaded 2-core machine
    far faster); the thread count is restored after it."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def ray_session():
    """An embedded Ray with 2 CPUs, shared by every test that needs Ray."""
    from stethoscope.runtime import init_ray

    ray = init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's standalone S3 server on 127.0.0.1 (a child process), for the whole session."""
    server = MotoS3(S3_PORT, tmp_path_factory.mktemp("s3") / "moto.log").start()
    yield server
    server.stop()


@pytest.fixture()
def s3_bucket(s3_server) -> str:
    """A new empty bucket on the test S3 server: ``s3://<name>``."""
    return s3_server.create_bucket()


@pytest.fixture(scope="session")
def dcase2020_root() -> Path:
    if not DCASE2020.is_dir():
        pytest.fail(f"real clips not found at {DCASE2020} (set STETHOSCOPE_SHARED_DATA)")
    return DCASE2020


@pytest.fixture(scope="session")
def dcase2023_root() -> Path:
    if not DCASE2023.is_dir():
        pytest.fail(f"real clips not found at {DCASE2023} (set STETHOSCOPE_SHARED_DATA)")
    return DCASE2023


@pytest.fixture(scope="session")
def synthetic_clicks(tmp_path_factory) -> Path:
    """A small synthetic DCASE 2020 tree: one machine (fan id_00), 3 s clips, severe clicks as anomalies."""
    from stethoscope.data.synthetic import make_dcase2020_tree

    root = tmp_path_factory.mktemp("synthetic_clicks")
    return make_dcase2020_tree(
        root, machine_types=("fan",), machine_ids=("00",), n_train=24, n_test_normal=10, n_test_anomaly=10,
        anomalies=("clicks",), severity=1.0, duration_s=3.0, seed=7,
    )


@pytest.fixture(scope="session")
def fan_runs(ray_session, synthetic_clicks, tmp_path_factory) -> list[Path]:
    """Two real pipeline runs on ``synthetic_clicks`` (not published) that share its split (split seed 0): the DCASE
    2020 autoencoder (20 epochs of batch 64, which detects these clicks, see test_training) and GANomaly (4 epochs of
    batch 64). Shared by test_publish and test_serve (which publishes the autoencoder's); copy a run before editing it.
    """
    from stethoscope.pipeline import run

    base = tmp_path_factory.mktemp("fan_runs")
    common = dict(machine_type="fan", store=str(base / "store"), runs_root=str(base / "runs"), registry=None)
    ae = run(synthetic_clicks, method="autoencoder", config={"epochs": 20, "batch_size": 64}, **common)
    gan = run(synthetic_clicks, method="ganomaly", config={"epochs": 4, "batch_size": 64}, **common)
    return [Path(ae.run_dir), Path(gan.run_dir)]
