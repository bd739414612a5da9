"""What every framework callback shares: the monitor built once the framework has built
the model and optimizer, each probe event's metrics kept for the framework's loggers,
and the run closed with the status the training ended with."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..monitoring import Monitor, MonitorOptions

#: the prefix of every metric an integration forwards: ``codiag/<probe>/<key>``
PREFIX = "codiag/"
#: 1.0 once the CO alarm fired, else 0.0: what a stopper or a logger reads
ALARM_KEY = PREFIX + "co_alarm"


def event_metrics(event: Mapping[str, Any]) -> dict[str, float]:
    """One probe event (``on_event``'s argument) as flat metrics: ``codiag/<probe>/<key>`` and the alarm flag."""
    out = {PREFIX + k: float(v) for k, v in event["values"].items()}
    out[ALARM_KEY] = float(event["co_alarm"] is not None)
    return out


def torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside a framework's wrapper (accelerate's ``AcceleratedOptimizer``,
    Lightning's ``LightningOptimizer``): the monitor counts steps with its step hook."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


class MonitorCallback:
    """The framework-free half of a callback: the arguments of :func:`codiag.monitor` less the
    model and optimizer, which the framework hands over at the start of training."""

    def __init__(self, run_dir: str | Path, eps: float, probe_data: Any = None, train_data: Any = None,
                 attack: Callable | None = None, every: Any = "epoch", probes: str | Iterable[str] | None = "default",
                 stop_on_co: bool = False, **options: Any) -> None:
        self._user_on_event = options.pop("on_event", None)
        MonitorOptions.from_kwargs(options)   # an unknown option fails here, when the callback is built
        self.run_dir, self.eps, self.probe_data, self.train_data = run_dir, eps, probe_data, train_data
        self.attack, self.every, self.probes, self.stop_on_co = attack, every, probes, bool(stop_on_co)
        self.options = options
        self.monitor: Monitor | None = None
        self.pending: list[dict[str, float]] = []   # metrics of the events not yet handed to the framework

    def start_monitor(self, model: nn.Module, optimizer: Any, probe_data: Any, train_data: Any,
                      **defaults: Any) -> Monitor:
        """Build and start the monitor (options given to the callback win over ``defaults``)."""
        self.pending = []
        self.monitor = Monitor(model, torch_optimizer(optimizer), self.run_dir, self.eps, probe_data=probe_data,
                               train_data=train_data, attack=self.attack, every=self.every, probes=self.probes,
                               on_event=self._on_event, **{**defaults, **self.options})
        return self.monitor.start()

    def _on_event(self, event: dict[str, Any]) -> None:
        self.pending.append({**event_metrics(event), PREFIX + "step": float(event["step"])})
        if self._user_on_event is not None:
            self._user_on_event(event)

    def take_metrics(self) -> list[dict[str, float]]:
        """The metrics of the events since the last call (oldest first)."""
        out, self.pending = self.pending, []
        return out

    @property
    def co_detected(self) -> bool:
        return self.monitor is not None and self.monitor.co_detected

    @property
    def running(self) -> bool:
        return self.monitor is not None and self.monitor._open

    def close(self, status: str = "finished") -> None:
        """Close the run (final event when finished); a second call does nothing."""
        if self.monitor is not None:
            self.monitor.close(status)
