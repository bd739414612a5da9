"""``Monitor``: :func:`codiag.monitor` as a Lightning callback (``lightning.pytorch``, else ``pytorch_lightning``).

::

    from codiag.integrations.lightning import Monitor
    trainer = lightning.Trainer(callbacks=[Monitor("runs/fgsm", eps=8/255, stop_on_co=True)])
    trainer.fit(module, datamodule=dm)

The monitor starts at ``on_train_start`` on ``pl_module`` (``pl_module(x)`` must return
logits, or give ``output_fn=``) and the optimizer named by ``optimizer`` (an index into
``trainer.optimizers``); steps are that optimizer's steps, so gradient accumulation and
manual optimization with several optimizers count what the monitor sees in a plain loop.
Probe data: ``probe_data``, else the datamodule's (or the fit's) validation loader, else
its test loader; training points from the fit's training loader. Probe events run at each
training epoch's end (or every N steps, ``every=N``), in fp32 whatever the ``precision``;
the run is closed at fit end (a final event), on an exception ("failed") and on Ctrl-C
("interrupted"). ``stop_on_co=True`` sets ``trainer.should_stop`` once the alarm fired;
``log_metrics=True`` also sends every event's metrics, ``codiag/<probe>/<key>`` at the
event's step, to the trainer's loggers.
"""
from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch import Callback
except ImportError:  # the standalone package
    from pytorch_lightning import Callback

from ..errors import UsageError
from ..runs import exit_status
from .base import MonitorCallback


class LightningMonitor(MonitorCallback):
    """The callback's hooks; :class:`Monitor` puts them on a Lightning ``Callback``.

    Arguments: those of :func:`codiag.monitor` less ``model`` and ``optimizer``, plus
    ``optimizer`` (index into ``trainer.optimizers`` of the one whose steps the
    monitor counts; 0), ``stop_on_co`` and ``log_metrics``.
    """

    def __init__(self, run_dir: Any, eps: float, *args: Any, optimizer: int = 0, log_metrics: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(run_dir, eps, *args, **kwargs)
        self.optimizer_index, self.log_metrics = int(optimizer), bool(log_metrics)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        optimizers = trainer.optimizers
        if not -len(optimizers) <= self.optimizer_index < len(optimizers):
            raise UsageError(f"codiag Lightning Monitor: optimizer={self.optimizer_index}, "
                             f"but the module configures {len(optimizers)} optimizer(s)")
        probe_data = self.probe_data if self.probe_data is not None else _eval_loader(trainer)
        train_data = self.train_data if self.train_data is not None else trainer.train_dataloader
        self.start_monitor(pl_module, optimizers[self.optimizer_index], probe_data, train_data)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._after_events(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.running:
            self.monitor.epoch_end()
        self._after_events(trainer)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.running:
            self.close("finished")
            self._after_events(trainer)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.close(exit_status(type(exception), exception))

    def _after_events(self, trainer: Any) -> None:
        events = self.take_metrics()
        if self.log_metrics:
            for metrics in events:
                step = int(metrics["codiag/step"])
                for logger in trainer.loggers:
                    logger.log_metrics(metrics, step=step)
        if self.stop_on_co and self.co_detected:
            trainer.should_stop = True


def _eval_loader(trainer: Any) -> Any:
    """The fit's validation loader (the datamodule's, the module's or the one given to ``fit``), else the
    datamodule's test loader; None when there is none (the monitor then draws probes from the training data)."""
    val_loop = getattr(getattr(trainer.fit_loop, "epoch_loop", None), "val_loop", None)
    source = getattr(val_loop, "_data_source", None)   # where Lightning itself reads the validation loader
    loader = None
    if source is not None and source.instance is not None and source.is_defined():
        loader = source.dataloader()
    dm = getattr(trainer, "datamodule", None)
    if loader is None and dm is not None:
        try:
            loader = dm.test_dataloader()
        except Exception:   # the datamodule does not define it (Lightning raises)
            loader = None
    if isinstance(loader, (list, tuple)):
        return loader[0] if loader else None
    if isinstance(loader, dict):
        return next(iter(loader.values()), None)
    return loader


class Monitor(LightningMonitor, Callback):
    __doc__ = LightningMonitor.__doc__
