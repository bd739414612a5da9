"""MLflow sink: rows as metrics at their step, the alarm and warnings as run tags, the HTML report
as artifacts under ``codiag_report/``.

Logs into the active run (``mlflow.active_run()``) when there is one and leaves it open; otherwise
creates a run (named after the run directory, in the experiment ``experiment``, else
``MLFLOW_EXPERIMENT_NAME``/``MLFLOW_EXPERIMENT_ID``, else "codiag") through ``MlflowClient``, so the
user's own active-run state is untouched, and ends it at close. MLflow's tracking URI applies
(``MLFLOW_TRACKING_URI`` or ``tracking_uri=``). Needs ``pip install 'codiag[mlflow]'``.
"""
from __future__ import annotations

import os
import time
from typing import Any, Mapping

from .sinks import ALERT_KINDS, describe

_STATUS = {"finished": "FINISHED", "interrupted": "KILLED"}


class MlflowSink:
    """``sinks=["mlflow"]``, or ``MlflowSink(experiment=..., tracking_uri=...)``."""

    name = "mlflow"

    def __init__(self, experiment: str | None = None, tracking_uri: str | None = None, report: bool = True) -> None:
        self.experiment, self.tracking_uri, self.report = experiment, tracking_uri, report
        self.client: Any = None
        self.run_id: str | None = None
        self._own = False

    def _experiment_id(self) -> str:
        name = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if name is None and os.environ.get("MLFLOW_EXPERIMENT_ID"):
            return os.environ["MLFLOW_EXPERIMENT_ID"]
        found = self.client.get_experiment_by_name(name or "codiag")
        return found.experiment_id if found is not None else self.client.create_experiment(name or "codiag")

    def event(self, kind: str, fields: Mapping[str, Any]) -> None:
        if kind == "start":
            import mlflow
            from mlflow.tracking import MlflowClient

            active = mlflow.active_run()
            self.client = MlflowClient(self.tracking_uri)   # None: MLflow's own tracking URI
            if active is not None:
                self.run_id = active.info.run_id
            else:
                self.run_id = self.client.create_run(self._experiment_id(), run_name=fields["name"]).info.run_id
                self._own = True
            self.client.set_tag(self.run_id, "codiag.run_dir", fields["run_dir"])
        elif kind == "report":
            self.client.log_artifacts(self.run_id, fields["path"], "codiag_report")
        elif kind in ALERT_KINDS:
            self.client.set_tag(self.run_id, f"codiag.{kind}", describe(kind, fields)[:5000])

    def log(self, step: int, rows: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in rows.items()]
        for i in range(0, len(metrics), 1000):   # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def close(self, status: str) -> None:
        if self._own and self.run_id is not None:
            self.client.set_terminated(self.run_id, _STATUS.get(status, "FAILED"))
        self.run_id = None
