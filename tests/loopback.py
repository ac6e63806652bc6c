"""A real multi-process Dask cluster on 127.0.0.1, shared by the scale-out tests."""

from __future__ import annotations

from typing import Any

# Without a dashboard the scheduler still serves /metrics over HTTP, by default on 8787;
# when that port is taken (another cluster of this module or a neighbour on a shared
# machine) distributed warns and moves, which filterwarnings=error would turn into a
# failure. A random port on loopback avoids the clash instead of hiding the warning.
NO_FIXED_PORTS = {"dashboard_address": "127.0.0.1:0"}


def local_cluster(n_workers: int = 2, *, threads: int = 1, **worker_kwargs: Any) -> Any:
    """``distributed.LocalCluster`` of worker processes under nannies (a context manager);
    ``worker_kwargs`` go to every worker (e.g. ``resources={"GPU": 1}``)."""
    import distributed

    return distributed.LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs=NO_FIXED_PORTS,
        **worker_kwargs,
    )
