"""The ``ray`` executor: each cell a Ray task (optional extra ``codiag[ray]``).

Every task asks for ``threads_per_run`` CPUs and, where the cluster has GPUs, ``1 /
runs_per_gpu`` of a GPU (fractional GPUs pack small runs). Ray re-runs a task whose worker
process or node died (``max_retries``); the retried cell takes over the dead worker's
claim and resumes its run from the checkpoint, so every run ends present once.

``ray_address`` connects to an existing cluster (``ray start --head`` on the head node,
``ray start --address HEAD:PORT`` on the others); without it a local Ray instance is
started for the sweep and stopped after it. On a cluster, SWEEP_DIR must be one shared
file system (NFS, Lustre, ...) mounted at the same path on every node: the tasks write
their runs there, and the claims that keep a run from running twice live there too.

Token authentication: ``ray start --head`` turns it on whenever it finds a token
(``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, which any earlier local
``ray.init()`` writes), but ``ray.init(address=...)`` never does so on its own for an explicit
address, and then fails as if the cluster were unreachable. With ``ray_address`` the sweep makes
the same decision as ``ray start``: unless ``RAY_AUTH_MODE`` says otherwise, a token found there
is sent (a cluster without authentication ignores it).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from ..errors import UsageError
from .cell import run_cell


def _ray():
    try:
        import ray
    except ImportError:
        raise UsageError("executor='ray' needs Ray: pip install 'codiag[ray]'") from None
    return ray


def _token_auth_like_ray_start() -> None:
    """Send the token that ``ray start`` would find (see the module docstring); a Ray without
    token authentication has nothing to enable."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def run_ray(sweep_dir: str, cells: Sequence[Mapping[str, Any]], protocol: Mapping[str, Any], *,
            address: str | None, jobs: int | None, threads_per_run: int, runs_per_gpu: int,
            local: Mapping[str, Any] | None, device: str | None, on_result: Callable[[dict[str, Any]], None],
            retries: int = 3) -> dict[str, Any]:
    """Submit every cell as a Ray task and report each result as it arrives. Returns what
    the cluster offered (``{"CPU": ..., "GPU": ...}``)."""
    ray = _ray()
    started_here = False
    if not ray.is_initialized():
        try:
            if address:
                _token_auth_like_ray_start()
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(address="local", num_cpus=(jobs or None) and jobs * threads_per_run,
                         include_dashboard=False,
                         log_to_driver=False)
                started_here = True
        except ConnectionError as e:
            raise UsageError(f"cannot reach the Ray cluster at {address}: {str(e).splitlines()[0]} (with token "
                             "authentication this process needs the cluster's token: RAY_AUTH_TOKEN or "
                             "~/.ray/auth_token, see `ray get-auth-token` on the head node)") from None
    try:
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0)) if device in (None, "auto") or str(device).startswith("cuda") else 0.0
        options: dict[str, Any] = {"num_cpus": threads_per_run, "max_retries": retries,
                                   "retry_exceptions": False}
        if gpus:
            options["num_gpus"] = 1.0 / runs_per_gpu
        task = ray.remote(_task).options(**options)
        dev = device if device not in (None, "auto") else ("cuda" if gpus else "cpu")
        refs = {task.remote(sweep_dir, dict(c), dict(protocol), dev, local, threads_per_run): c
                for c in cells}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                cell = refs.pop(ref)
                try:
                    on_result(ray.get(ref))
                except ray.exceptions.RayError as e:   # a worker, node or raylet died beyond the retries
                    on_result({"name": cell["name"], "status": "failed",
                               "error": f"Ray gave up on it: {type(e).__name__}"})
        return {k: resources.get(k, 0) for k in ("CPU", "GPU")}
    finally:
        if started_here:
            ray.shutdown()


def _task(sweep_dir: str, cell: Mapping[str, Any], protocol: Mapping[str, Any], device: str,
          local: Mapping[str, Any] | None, threads: int) -> dict[str, Any]:
    import socket

    return {**run_cell(sweep_dir, cell, protocol, device=device, local=local, threads=threads),
            "device": device, "host": socket.gethostname()}
