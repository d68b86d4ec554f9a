"""Ray start-up shared by every job and by the test suite.

``init_ray()`` either joins a running cluster or starts an embedded one, and in both cases pins the address:

- **Join** (``address=`` / ``--address`` / ``RAY_ADDRESS``, which ``ray job submit`` sets): connect to that cluster.
  When the address is a GCS ``host:port`` (what ``ray job submit`` gives its drivers), it is also put into the job's
  ``runtime_env`` (``env_vars.RAY_ADDRESS``), so every task and actor of the job resolves Ray's state API on this
  cluster and not on another instance that runs on the same host. A cluster that listens on 127.0.0.1 only (another
  job's embedded Ray, a head started with ``python -m stethoscope.runtime ray start --head``) is joined at 127.0.0.1
  in Ray's single-machine mode (Ray would otherwise rewrite 127.0.0.1 to the host's network address and wait there).
- **Embedded** (no address): a single-machine Ray that listens on 127.0.0.1 only, with Ray's state API (the dashboard
  process) on 127.0.0.1 at a free port, and ``RAY_ADDRESS`` pinned to its own GCS in every process it starts.

Why the embedded Ray is set up this way (issue 10 item 7, issue 11 items 3 and 6):

- Ray Train V2 starts a detached ``PlacementGroupCleaner`` per run. When a Train controller dies without shutting
  down (Tune stops or kills a trial: ASHA), the cleaner is the only thing that removes the run's placement group,
  which is scoped to the job and otherwise holds its CPUs until the driver exits. The cleaner asks Ray's state API
  (``ray.util.state.get_actor``, served by the dashboard process) whether the controller is alive. Without the
  dashboard every query fails ("Failed to query Ray Train Controller actor state", once a second, forever), and a
  leaked placement group of 1 CPU on a 2-CPU machine blocks the next trial's Ray Data read for good ("Cluster
  resources are not enough to run any task from ReadFilesParquetV2"). So the dashboard is on, bound to 127.0.0.1.
- The state API resolves the cluster from ``RAY_ADDRESS``, else ``/tmp/ray/ray_current_cluster`` (written by the last
  ``ray start`` on the host, possibly another user's), else the GCS processes it finds on the host ("Found multiple
  active Ray instances"). Workers of an embedded Ray have no ``RAY_ADDRESS``, so with a second instance up the
  cleaner asked the wrong cluster, or crashed. Here the GCS port is chosen before the start and ``RAY_ADDRESS`` is
  in the environment of the raylet, so of every worker it starts.
- Ray binds its GCS, raylet, object manager and workers to all interfaces unless the node IP is 127.0.0.1, and it
  only accepts 127.0.0.1 in its single-machine mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read by Ray when it is
  imported; the mode it uses on macOS and Windows). ``init_ray`` turns that mode on while it starts the embedded Ray.

Authentication is left to Ray: a new local Ray 2.60 cluster turns token authentication on by default (and creates
``~/.ray/auth_token`` if missing) unless ``RAY_AUTH_MODE`` says otherwise. The test suite sets
``RAY_AUTH_MODE=disabled`` (its Ray listens on 127.0.0.1 only).

For a command that starts Ray itself (``serve run``, ``ray start --head``), :func:`single_machine_env` gives the
environment that makes it listen on 127.0.0.1 only; ``python -m stethoscope.runtime serve run serve/config.yaml``
runs such a command with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
#: Ray's switch for its single-machine mode (node IP 127.0.0.1, every server bound to loopback). Ray reads it when
#: ``ray._private.ray_constants`` is imported.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"  # ray_constants.GCS_PORT_ENVIRONMENT_VARIABLE, read when a head node starts
_HOST_PORT = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:\d+$")

# The address init_ray pinned in os.environ after it started an embedded Ray: after ray.shutdown() a later
# init_ray() starts a new embedded Ray instead of trying to join the one that is gone.
_started_address: str | None = None


START_ATTEMPTS = 2  # an embedded start that fails (slow agents on an overloaded machine) is retried once


def _child_pids() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def _stop_pids(pids: set[int], timeout_s: float = 10.0) -> None:
    """Terminate these processes (children of this process), then kill the ones still alive after ``timeout_s``."""
    import psutil

    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            continue
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it from its ephemeral range), for a server started next
    (a Ray node's GCS / dashboard / agent ports, a Serve proxy)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(port: int, proc, timeout_s: float = 300.0, log: str | os.PathLike | None = None,
              host: str = "127.0.0.1") -> None:
    """Wait until ``host:port`` accepts a TCP connection, while ``proc`` (the ``subprocess.Popen`` that should open it,
    e.g. ``ray start --head --block``) runs.

    Raises:
        RuntimeError: ``proc`` exited first, or the port did not open within ``timeout_s`` seconds; the message ends
            with the last 3,000 characters of ``log`` (the process's output file), if given.
    """
    def tail() -> str:
        return f":\n{Path(log).read_text(errors='replace')[-3000:]}" if log is not None and Path(log).is_file() else ""

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0] if isinstance(proc.args, list) else proc.args} exited with "
                               f"{proc.returncode} before port {port} opened{tail()}")
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.5)
    raise RuntimeError(f"port {port} not open after {timeout_s:.0f} s{tail()}")


def kill_tree(proc, timeout_s: float = 30.0) -> None:
    """SIGKILL a process this program started (a ``subprocess.Popen``, e.g. ``ray start --block``) and every process
    below it (its Ray: GCS, raylet, workers, agents), then wait for them. Stops only that tree, never another Ray
    on the host (unlike ``ray stop``)."""
    import psutil

    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        tree = []
    targets = tree if proc.poll() is not None else [*tree, psutil.Process(proc.pid)]
    for p in targets:
        with contextlib.suppress(psutil.Error):
            p.kill()
    proc.wait(timeout=timeout_s)
    psutil.wait_procs(tree, timeout=timeout_s)


def single_machine_env() -> dict[str, str]:
    """Environment variables that make a Ray started by a command (``serve run``, ``ray start --head``) single-machine:
    node IP 127.0.0.1, so the GCS, raylet, object manager, workers and dashboard listen on 127.0.0.1 only.

    Such a Ray cannot take worker nodes. Joining a cluster that listens on its network address from a process
    with this environment is wrong (its driver would claim node IP 127.0.0.1): use it for commands that start Ray;
    :func:`init_ray` joins a loopback-only cluster in this mode by itself.
    """
    return {SINGLE_MACHINE_ENV: "0"}


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on ``host`` a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    """Set environment variables for the duration of the block (processes started inside inherit them)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _single_machine_mode():
    """Ray's single-machine mode for the block, also when ``ray`` was imported before (Ray reads the variable into
    ``ray_constants.ENABLE_RAY_CLUSTER`` at import; the processes Ray starts inherit the variable)."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        with _environ(single_machine_env()):
            yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


#: Ray's console log level for this process and the workers it starts ("INFO": Ray's default; "WARNING" after
#: :func:`quiet_ray_output`). Kept in the environment, which an embedded Ray's workers inherit.
RAY_LOG_LEVEL_ENV = "STETHOSCOPE_RAY_LOG_LEVEL"
#: Ray Data's own switch for the level of its ``ray.data`` logger, read when ``ray.data`` is imported (in the driver
#: and in every worker that iterates a dataset).
RAY_DATA_LOG_LEVEL_ENV = "RAY_DATA_LOG_LEVEL"


def quiet_ray_output(verbose: bool = False) -> None:
    """Keep Ray's INFO lines off a job's console so that the job ends with its result table (issue 12 §5), unless
    ``verbose``. Call it before Ray is imported (the jobs do, in ``setup_logging``).

    Only Ray's own knobs are used: ``RAY_DATA_LOG_LEVEL=WARNING`` (the ``ray.data`` logger of the driver and of every
    worker: no "Starting execution of Dataset", execution-plan, ``logging_progress`` or "execution finished"
    lines), ``ray.init(logging_level=...)`` (:func:`init_ray`), one global Ray Data progress bar per dataset
    execution (``DataContext.enable_operator_progress_bars = False``, ``print_on_execution_start = False``) and Ray
    Train's ``LoggingConfig(log_level=...)`` (:func:`ray_log_level`, read by ``training.fit``). Warnings and errors
    still show; Ray's log files under ``/tmp/ray/session_*/logs`` keep what their own levels let through. A
    ``RAY_DATA_LOG_LEVEL`` already set in the environment wins.
    """
    if verbose:
        os.environ[RAY_LOG_LEVEL_ENV] = "INFO"
        return
    os.environ[RAY_LOG_LEVEL_ENV] = "WARNING"
    os.environ.setdefault(RAY_DATA_LOG_LEVEL_ENV, "WARNING")


def ray_log_level() -> str:
    """Ray's console log level for this process: ``"WARNING"`` after :func:`quiet_ray_output`, else ``"INFO"``."""
    level = os.environ.get(RAY_LOG_LEVEL_ENV, "INFO").upper()
    return level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO"


def _quiet_env() -> dict[str, str]:
    """The output settings a job's workers on a joined cluster need (they do not inherit this environment)."""
    return {k: os.environ[k] for k in (RAY_LOG_LEVEL_ENV, RAY_DATA_LOG_LEVEL_ENV) if k in os.environ}


def init_ray(num_cpus: int | None = None, num_gpus: int | None = None, *, address: str | None = None):
    """Join a running Ray cluster, or start an embedded single-machine one. Returns ``ray``.

    Args:
        num_cpus / num_gpus: resources of an embedded Ray (default: what Ray detects); ignored when joining.
        address: a running cluster to join: its GCS ``host:port`` or ``auto``. Default: ``RAY_ADDRESS`` (set by
            ``ray job submit``, or by a job's ``--address``); without either, an embedded Ray is started.
    Returns:
        the ``ray`` module, initialised. Afterwards ``RAY_ADDRESS`` in ``os.environ`` is this cluster's GCS address.
    Raises:
        ConnectionError: the cluster at ``address`` cannot be reached (Ray's own message).
        RuntimeError: the embedded Ray came up on another address than the one chosen (Ray's single-machine mode
            did not take effect).
    """
    global _started_address
    import ray

    if ray.is_initialized():
        return ray
    env_address = os.environ.get("RAY_ADDRESS")
    if env_address and env_address == _started_address:
        os.environ.pop("RAY_ADDRESS")  # the address of an embedded Ray we started and that has been shut down
        env_address = None
    address = address or env_address
    if address:
        _join(ray, address)
    else:
        _start_embedded(ray, num_cpus, num_gpus)
        _started_address = os.environ["RAY_ADDRESS"]
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # deterministic row order → reproducible runs
    if ray_log_level() != "INFO":  # quiet_ray_output(): one progress bar per dataset, no execution-plan lines
        ctx.enable_operator_progress_bars = False
        ctx.print_on_execution_start = False
    return ray


def _port_open(host: str, port: int, timeout_s: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _resolve_join_address(address: str) -> tuple[str, bool]:
    """The GCS ``host:port`` to join and whether that cluster listens on 127.0.0.1 only.

    ``auto`` is resolved as Ray resolves it (``RAY_ADDRESS``, else the cluster the last ``ray start`` on this host
    started). Ray rewrites a loopback host to the host's network address before it connects, which is right for a
    cluster that listens on every interface and finds nothing for one that listens on 127.0.0.1 only (an embedded
    Ray of another job, or a head started with ``python -m stethoscope.runtime ray start --head``). So a loopback
    address whose port is closed on the network address is joined in Ray's single-machine mode. Anything else
    (``ray://`` client addresses ...) is returned unchanged.
    """
    from ray._common.network_utils import build_address, is_localhost, node_ip_address_from_perspective, parse_address
    from ray._private import services

    if address == "auto":
        address = services.get_ray_address_from_environment("auto", None)
    parsed = parse_address(address)
    if parsed is None or not is_localhost(parsed[0]):
        return address, False
    port = int(parsed[1])
    network_ip = node_ip_address_from_perspective(None)
    if network_ip and not is_localhost(network_ip) and _port_open(network_ip, port):
        return build_address(network_ip, port), False
    return build_address(LOOPBACK, port), True


def _join(ray, address: str) -> None:
    address, loopback_only = _resolve_join_address(address)
    log.info("joining the Ray cluster at %s%s", address, " (127.0.0.1 only)" if loopback_only else "")
    runtime_env = None
    if _HOST_PORT.match(address):
        # Every task and actor of this job (Ray Train's placement-group cleaner included) resolves the state API on
        # this cluster. Ray merges env_vars with the job's runtime_env (ray job submit --runtime-env ...).
        runtime_env = {"env_vars": {"RAY_ADDRESS": address, **_quiet_env()}}
    # A loopback-only cluster's raylet has node IP 127.0.0.1: this driver must claim the same to find it.
    with _single_machine_mode() if loopback_only else contextlib.nullcontext():
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env, logging_level=ray_log_level())
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def _start_embedded(ray, num_cpus: int | None, num_gpus: int | None) -> None:
    # An embedded Ray on one machine: the Train controller polls its workers every 0.5 s instead of 2 s (a finished
    # run is noticed sooner) and no spot-preemption watcher actor is started. Set either variable to override.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    for attempt in range(1, START_ATTEMPTS + 1):
        gcs_port, dashboard_port = free_port(), free_port()
        gcs_address = f"{LOOPBACK}:{gcs_port}"
        started_before = _child_pids()
        try:
            # RAY_ADDRESS and the GCS port go into the environment the raylet (and so every worker) inherits;
            # address="local" makes ray.init start a new instance instead of reading RAY_ADDRESS.
            with _single_machine_mode(), _environ({GCS_PORT_ENV: str(gcs_port), "RAY_ADDRESS": gcs_address}):
                ray.init(
                    address="local", num_cpus=num_cpus, num_gpus=num_gpus, log_to_driver=True,
                    logging_level=ray_log_level(),
                    include_dashboard=True, dashboard_host=LOOPBACK, dashboard_port=dashboard_port,
                )
            break
        except Exception as exc:  # noqa: BLE001 - retried once, then re-raised
            # On an overloaded machine the raylet gives up when its agents start slowly ("The current node timed
            # out during startup"). Stop what this attempt started (our own child processes) and try once more.
            if ray.is_initialized():
                ray.shutdown()
            _stop_pids(_child_pids() - started_before)
            if attempt == START_ATTEMPTS:
                raise
            log.warning("starting the embedded Ray failed (%s); retrying", str(exc).strip().splitlines()[0])
    got = ray.get_runtime_context().gcs_address
    if got != gcs_address:
        ray.shutdown()
        raise RuntimeError(f"the embedded Ray started at {got}, not at {gcs_address}: its single-machine mode "
                           f"({SINGLE_MACHINE_ENV}=0) did not take effect")
    os.environ["RAY_ADDRESS"] = gcs_address  # this process's own state queries and the jobs it starts join it
    log.info("started an embedded Ray at %s (state API at http://%s:%d)", gcs_address, LOOPBACK, dashboard_port)


def state_api_error(timeout_s: float = 60.0) -> str | None:
    """Ask Ray's state API from the head node, where Ray Train's placement-group cleaner runs. Returns None when it
    answers, else the last error (e.g. ``ServerUnavailable`` when the cluster runs without its dashboard process,
    or ``ConnectionError: Found multiple active Ray instances`` when a worker cannot tell which cluster is its own).

    Without an answer, Ray Train cannot release the placement group (CPUs, GPUs) of a run whose controller dies
    without shutting down, e.g. every Tune trial that ASHA stops. Retries until ``timeout_s`` (the dashboard's state
    module may come up a little after ``ray.init``).
    """
    import ray
    from ray._common.constants import HEAD_NODE_RESOURCE_NAME

    @ray.remote(num_cpus=0, resources={HEAD_NODE_RESOURCE_NAME: 0.001}, max_retries=0)
    def probe(attempts: int) -> str | None:
        import time

        from ray.util.state import list_nodes

        error = None
        for _ in range(attempts):
            try:
                list_nodes(limit=1, timeout=10, raise_on_missing_output=False)
                return None
            except Exception as exc:  # noqa: BLE001 - reported as text
                error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                time.sleep(1.0)
        return error

    return ray.get(probe.remote(max(1, int(timeout_s // 2))), timeout=timeout_s + 60)


def live_placement_groups() -> dict[str, dict]:
    """Placement groups of the connected cluster that are not removed: id (hex) → ``{"state", "bundles"}``."""
    import ray

    return {pg_id: {"state": info["state"], "bundles": info["bundles"]}
            for pg_id, info in ray.util.placement_group_table().items() if info["state"] != "REMOVED"}


def wait_for_placement_groups(keep=(), timeout_s: float = 30.0) -> dict[str, dict]:
    """Wait until every live placement group except those in ``keep`` is removed. Returns the ones still live after
    ``timeout_s`` seconds (empty: all released)."""
    keep = set(keep)
    deadline = time.monotonic() + timeout_s
    while True:
        left = {k: v for k, v in live_placement_groups().items() if k not in keep}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.5)


def gpu_available() -> bool:
    """True if the Ray cluster reports at least one GPU."""
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def main(argv: list[str]) -> int:
    """``python -m stethoscope.runtime COMMAND ...``: run COMMAND with :func:`single_machine_env`, e.g.
    ``python -m stethoscope.runtime serve run serve/config.yaml`` (Ray listens on 127.0.0.1 only)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(main.__doc__)
        return 0 if argv else 2
    if os.environ.get("RAY_ADDRESS"):
        print("error: RAY_ADDRESS is set: this wrapper is for commands that start their own Ray; unset it",
              file=sys.stderr)
        return 2
    os.environ.update(single_machine_env())
    os.execvp(argv[0], argv)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
