"""Weights & Biases sink: rows as metrics against their own x-axis ``codiag/step``, the alarm and
warnings as W&B alerts, the HTML report as an artifact.

Logs into the active run (``wandb.run``) when there is one and leaves it open; otherwise starts a
run (``wandb.init(project="codiag", name=<run directory name>, config=<run config>, **init)``) and
finishes it at close. W&B's own settings apply (``WANDB_MODE=offline`` keeps everything on disk).
Needs ``pip install 'codiag[wandb]'``.
"""
from __future__ import annotations

from typing import Any, Mapping

from .sinks import ALERT_KINDS, describe

#: codiag's steps are optimizer steps of the monitored run, not W&B's own step counter
STEP = "codiag/step"


class WandbSink:
    """``sinks=["wandb"]``, or ``WandbSink(project=..., entity=..., ...)`` (keywords go to ``wandb.init``)."""

    name = "wandb"

    def __init__(self, report: bool = True, **init: Any) -> None:
        self.report, self.init, self.run, self._own = report, init, None, False

    def event(self, kind: str, fields: Mapping[str, Any]) -> None:
        import wandb

        if kind == "start":
            self.run = wandb.run
            if self.run is None:
                config = {k: v for k, v in fields["config"].items() if k != "monitor"}
                self.run = wandb.init(**{"project": "codiag", "name": fields["name"], "config": config,
                                         **self.init})
                self._own = True
            self.run.define_metric(STEP, hidden=True)
            self.run.define_metric("codiag/*", step_metric=STEP)
        elif kind == "report":
            artifact = wandb.Artifact(f"codiag-report-{self.run.id}", type="codiag-report")
            artifact.add_dir(fields["path"])
            self.run.log_artifact(artifact)
        elif kind in ALERT_KINDS:
            text = describe(kind, fields)
            level = wandb.AlertLevel.ERROR if kind == "co_alarm" else wandb.AlertLevel.WARN
            self.run.alert(title=f"codiag {kind}", text=text, level=level, wait_duration=1)   # 0 means W&B's 1 min

    def log(self, step: int, rows: Mapping[str, float]) -> None:
        self.run.log({STEP: step, **rows})

    def close(self, status: str) -> None:
        if self._own and self.run is not None:
            self.run.finish(exit_code=0 if status == "finished" else 1)
        self.run = None
