"""Run one cell of a sweep, in whatever process an executor gives it.

Exactly once: the cell is claimed first (``index.Claim``); under the claim a finished run
is skipped, an interrupted or killed one is resumed from its checkpoint
(``codiag.train(cfg, resume=True)``) or, without one, trained again from the start, and a
new one is trained. A cell that another
process holds is left to it ("busy"). Returns a small dict the executors report.
"""
from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Any, Mapping

from .grid import Cell, cell_config
from .index import Claim, cell_status, check_cell_paths


def _resumable(run_dir: Path) -> bool:
    """Whether the run left a training checkpoint to resume from (``final.pt`` holds only the
    final weights)."""
    return any(p.name != "final.pt" for p in (run_dir / "checkpoints").glob("*.pt"))


def run_cell(sweep_dir: str, cell: Mapping[str, Any], protocol: Mapping[str, Any], device: str = "auto",
             local: Mapping[str, Any] | None = None, threads: int | None = None) -> dict[str, Any]:
    """Train (or resume, or skip) one cell; never raises for a failed run, so one bad run
    does not end the sweep: the result says ``failed`` with the error's last line."""
    import torch

    from ..trainer import train

    if threads:
        torch.set_num_threads(int(threads))
    root = Path(sweep_dir)
    c = Cell.from_dict(cell)
    check_cell_paths(root, c)
    result: dict[str, Any] = {"name": c.name, "pid": os.getpid()}
    with Claim(root, c.name) as claim:
        if not claim.acquire():
            return {**result, "status": "busy", "holder": claim.holder()}
        before = cell_status(root, c)
        if before == "finished":
            return {**result, "status": "skipped"}
        cfg = cell_config(c, protocol, str(root / c.name), device=device, local=local)
        resume = before != "new" and _resumable(root / c.name)
        start = time.perf_counter()
        try:
            # An unfinished run without a training checkpoint (killed before its first epoch
            # ended) starts over: resuming would continue the counts from fresh weights.
            train(cfg, resume=resume, overwrite=before != "new" and not resume)
        except Exception as e:  # the run directory records the failure; the sweep goes on
            lines = [ln for ln in "".join(traceback.format_exception_only(type(e), e)).splitlines() if ln]
            return {**result, "status": "failed", "error": lines[-1] if lines else type(e).__name__,
                    "seconds": time.perf_counter() - start}
        return {**result, "status": "resumed" if resume else "restarted" if before != "new" else "trained",
                "seconds": time.perf_counter() - start}
