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


@pytest.fixture(scope="session")
def ray_session():
    """An embedded Ray with 2 CPUs, shared by every test that needs Ray."""
    from stethoscope.runtime import init_ray

    ray = init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


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
