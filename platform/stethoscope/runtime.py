"""Ray start-up shared by every job and by the test suite.

Locally, ``init_ray()`` starts an embedded Ray (no dashboard). Under ``ray job submit`` (RAY_ADDRESS set) it connects
to the cluster instead, so the same job script runs on a laptop and on a cluster.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def init_ray(num_cpus: int | None = None, num_gpus: int | None = None):
    """Start or join Ray. Returns ``ray``.

    Args:
        num_cpus / num_gpus: resources of an embedded (local) Ray; ignored when joining a cluster via RAY_ADDRESS.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if ray.is_initialized():
        return ray
    address = os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        # An embedded Ray on one machine: the Train controller polls its workers every 0.5 s instead of 2 s (a
        # finished run is noticed sooner) and no spot-preemption watcher actor is started. Set either variable to
        # override.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=True)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # deterministic row order → reproducible runs
    return ray


def gpu_available() -> bool:
    """True if the Ray cluster reports at least one GPU."""
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0
