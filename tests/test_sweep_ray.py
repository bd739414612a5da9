"""Eps sweeps on Ray: a real local instance (``ray.init(num_cpus=2)``), a Ray worker killed
in the middle of a run, and a real two-CPU cluster on loopback (``ray start --head``) joined
with ``--ray-address``. Skipped where Ray is not installed (``pip install 'codiag[ray]'``).
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import codiag

# Ray's token authentication (RAY_AUTH_MODE, RAY_AUTH_TOKEN) is set in conftest.py: Ray reads it
# when it is first imported, and other test files import Ray too.
ray = pytest.importorskip("ray")

TINY = dict(train_limit=256, epochs=1, batch_size=64, eval_n=32, eval_steps=3, eval_restarts=1, probe_n=32,
            train_probe_n=32, probes="robust_acc,grad_align")


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line]


def _finished_once(out: Path, result) -> None:
    assert result.done == result.total and not result.failed
    dirs = sorted(p.name for p in out.iterdir() if (p / "run.json").exists())
    assert dirs == sorted(c.name for c in result.cells)          # every run present, once
    for d in dirs:
        assert json.loads((out / d / "run.json").read_text())["status"] == "finished"
        assert sum(e["kind"] == "run_end" and e.get("status") == "finished" for e in _events(out / d)) == 1


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def test_local_ray_instance_runs_a_grid(local_ray, tmp_path):
    out = tmp_path / "s"
    result = codiag.sweep("fgsm,n_fgsm", "0.1", "0", out=out, executor="ray", **TINY)
    _finished_once(out, result)
    assert {r["status"] for r in result.results} == {"trained"}
    assert len({r["pid"] for r in result.results}) >= 1


def test_killed_ray_worker_run_resumes_once(local_ray, tmp_path):
    """SIGKILL the worker of a run while it trains: Ray retries the task, the retry takes over
    the dead worker's claim and resumes the run (or restarts it, without a checkpoint); every
    run ends finished, once."""
    out = tmp_path / "s"
    killed: list[int] = []

    def killer() -> None:
        run_dir = out / "fgsm-eps0.1-seed1"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            try:   # the run is written (step-0 probes done) and its writer holds the lock
                started = len((run_dir / "metrics.csv").read_text().splitlines()) > 1
                pid = int((run_dir / "run.lock").read_text().strip() or 0) if started else 0
            except (OSError, ValueError):
                pid = 0
            if pid:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.01)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    result = codiag.sweep("fgsm", "0.1", "0,1", out=out, executor="ray", **{**TINY, "epochs": 2})
    t.join(timeout=5)
    assert killed, "the run was never seen training"
    _finished_once(out, result)
    # the retry resumed the run from its training checkpoint, or (killed before its first epoch
    # ended, with none) trained it again from the start; never a second run beside it
    retried = next(r for r in result.results if r["name"] == "fgsm-eps0.1-seed1")
    assert retried["status"] in ("resumed", "restarted") and retried["pid"] != killed[0]
    kinds = [e["kind"] for e in _events(out / "fgsm-eps0.1-seed1")]
    assert kinds.count("run_start") == 1 and kinds.count("resume") == (retried["status"] == "resumed")


def test_a_ray_run_killed_after_its_checkpoint_resumes_to_the_uninterrupted_rows(local_ray, tmp_path):
    """SIGKILL a Ray worker just after its run's first epoch checkpoint: the retried task resumes
    the run, and its metrics.csv equals an uninterrupted run's row for row, values included."""
    opts = {**TINY, "epochs": 3, "eval_n": 0, "probes": "robust_acc,weight_update,perturbation_delta"}
    out, run_dir, killed = tmp_path / "s", tmp_path / "s" / "fgsm-eps0.1-seed0", []

    def killer() -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not killed:
            try:
                ready = (run_dir / "checkpoints" / "resume.pt").exists()
                pid = int((run_dir / "run.lock").read_text().strip() or 0) if ready else 0
            except (OSError, ValueError):
                pid = 0
            if pid:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.005)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    result = codiag.sweep("fgsm", "0.1", "0", out=out, executor="ray", echo=False, **opts)
    t.join(timeout=5)
    assert killed and [r["status"] for r in result.results] == ["resumed"], result.results
    whole = codiag.sweep("fgsm", "0.1", "0", out=tmp_path / "whole", jobs=1, echo=False, **opts)
    assert whole.done == 1
    a, b = codiag.load_run(run_dir), codiag.load_run(tmp_path / "whole" / run_dir.name)
    assert a.scalar("weight_update", "l2_all")["epoch"].tolist() == [1, 2, 3]
    assert a.metrics.equals(b.metrics)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_env(home: Path) -> dict[str, str]:
    """The environment of a fresh shell on a cluster node: no RAY_AUTH_* settings, its own HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return {**env, "HOME": str(home), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def loopback_cluster(tmp_path_factory):
    """A head node on 127.0.0.1 with 2 CPUs, started by a plain `ray start --head` as the README's
    recipe does, on a node that holds a token in ~/.ray/auth_token (written by any earlier local
    ``ray.init()``): Ray 2.60 then turns token authentication on. ``--block`` keeps the head in
    one process group, which the fixture ends; `ray stop` would end every Ray on the machine."""
    if ray.is_initialized():
        ray.shutdown()
    home = tmp_path_factory.mktemp("home")
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    port = _free_port()
    log = home / "head.log"
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--port", str(port),
           "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard=false", "--node-ip-address", "127.0.0.1",
           "--disable-usage-stats", "--temp-dir", str(tmp_path_factory.mktemp("ray"))]
    with open(log, "wb") as f:
        head = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_ray_env(home),
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log.read_text() and time.monotonic() < deadline:
            assert head.poll() is None, log.read_text()[-2000:]
            time.sleep(0.5)
        text = log.read_text()
        assert "Ray runtime started" in text, text[-2000:]
        assert "Token authentication is enabled" in text     # what this test is about
        yield f"127.0.0.1:{port}", home
    finally:
        for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(head.pid, sig)
                head.wait(timeout=wait_s)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        try:
            os.killpg(head.pid, signal.SIGKILL)   # the head's own children (GCS, raylet) if any remain
        except ProcessLookupError:
            pass


def test_loopback_cluster_via_ray_address(loopback_cluster, tmp_path):
    """`codiag sweep --ray-address` from a shell of that node (no RAY_AUTH_* set): the sweep sends
    the token `ray start` found, as the README's recipe expects."""
    address, home = loopback_cluster
    out = tmp_path / "s"
    argv = ["sweep", "--methods", "fgsm", "--eps", "0.1,0.2", "--seeds", "0", "--out", str(out),
            "--executor", "ray", "--ray-address", address, "--train-limit", "256", "--epochs", "1",
            "--batch-size", "64", "--eval-n", "32", "--eval-steps", "3", "--eval-restarts", "1",
            "--probes", "grad_align"]
    done = subprocess.run([sys.executable, "-m", "codiag", *argv], capture_output=True, text=True,
                          env=_ray_env(home), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 of 2 done" in done.stdout and "offered 2 CPU(s)" in done.stdout
    assert all(json.loads((out / n / "run.json").read_text())["status"] == "finished"
               for n in ("fgsm-eps0.1-seed0", "fgsm-eps0.2-seed0"))
