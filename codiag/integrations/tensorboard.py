"""TensorBoard sink: scalars under ``codiag/<probe>/<key>`` and events as text entries.

Writes event files to ``RUN_DIR/tensorboard`` (or the ``log_dir`` given), or into a ``SummaryWriter``
(or any object with ``add_scalar``, ``add_text``, ``flush``, ``close``) of the user's, which is then
flushed but left open. Needs ``pip install 'codiag[tensorboard]'``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from .sinks import ALERT_KINDS, describe


class TensorBoardSink:
    """``sinks=["tensorboard"]``, or ``TensorBoardSink(log_dir=...)`` / ``TensorBoardSink(writer=...)``."""

    name = "tensorboard"
    report = False          # TensorBoard keeps no files: the report stays in RUN_DIR/report

    def __init__(self, log_dir: str | Path | None = None, writer: Any = None) -> None:
        self.log_dir, self.writer, self._own = log_dir, writer, writer is None

    def event(self, kind: str, fields: Mapping[str, Any]) -> None:
        if kind == "start":
            if self.writer is None:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(log_dir=str(self.log_dir or Path(fields["run_dir"]) / "tensorboard"))
            return
        if kind in ALERT_KINDS:
            body = describe(kind, fields) + "\n\n    " + json.dumps(dict(fields), default=str)
            self.writer.add_text(f"codiag/{kind}", body, int(fields.get("step", 0)))
            self.writer.flush()

    def log(self, step: int, rows: Mapping[str, float]) -> None:
        for tag, value in rows.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self, status: str) -> None:
        if self.writer is None:
            return
        self.writer.flush()
        if self._own:
            self.writer.close()
