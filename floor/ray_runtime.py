"""One place that starts Ray: embedded on this machine, or joining the cluster named by RAY_ADDRESS."""

from __future__ import annotations

import logging
import os


def init_ray(num_cpus: int | None = None) -> None:
    """Start (or join) Ray once per process; later calls are no-ops.

    With no RAY_ADDRESS, Ray starts embedded with `num_cpus` workers (all cores when None); with one set,
    this process joins that cluster and `num_cpus` is ignored.
    """
    import ray
    from ray.data import DataContext

    if ray.is_initialized():
        return
    quiet_libraries()
    address = os.environ.get("RAY_ADDRESS") or None
    ray.init(
        address=address,
        num_cpus=None if address else num_cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    ctx = DataContext.get_current()
    # Our blocks are Arrow tables; keep them so (no pandas round trip) and fail loudly on a bad block.
    ctx.max_errored_blocks = 0


def quiet_libraries() -> None:
    """Off: lines every start printed that tell a user nothing they can act on. Ray's note that token
    authentication is on (it is, as it should be), lance's fork-safety warning (printed by each child a
    process forks after importing lance; ours fork only to exec, or spawn), and Ray Data's INFO lines on the
    console (LUMOS_VERBOSE=1 keeps them)."""
    import warnings

    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="lance is not fork-safe", category=UserWarning)
    if os.environ.get("LUMOS_VERBOSE"):
        return
    import ray.data  # noqa: F401 - configures its logger, which this then adjusts

    # Ray Data logs every dataset's plan and, off a terminal, its progress at INFO on the console (~15 lines a
    # dataset); its log file in the session folder (/tmp/ray/session_*/logs/ray-data) keeps all of it.
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):  # the console
            handler.setLevel(logging.WARNING)
            handler.addFilter(_NotOurChoice())


class _NotOurChoice(logging.Filter):
    """Ray Data's notes on what we chose to do (our own progress bars replace its bars)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("Progress bars disabled", "Progress bars for operators disabled"))


def cluster_cpus() -> int:
    """The CPUs of the cluster (at least 1): how many plain tasks to keep in flight."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def on_cluster() -> bool:
    return bool(os.environ.get("RAY_ADDRESS"))


def describe_cluster() -> str:
    """One line for the user: where the work runs."""
    import ray

    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    res = ray.cluster_resources()
    where = f"cluster at {os.environ['RAY_ADDRESS']}" if on_cluster() else "embedded"
    return (f"Ray {where}: {nodes} node{'s' if nodes != 1 else ''}, {int(res.get('CPU', 0))} CPUs, "
            f"{res.get('GPU', 0):g} GPUs")
