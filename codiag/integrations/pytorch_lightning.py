"""``Monitor`` for the standalone ``pytorch_lightning`` package: :mod:`codiag.integrations.lightning`'s
callback on ``pytorch_lightning.Callback`` (a ``pytorch_lightning.Trainer`` accepts only its own callbacks)."""
from __future__ import annotations

from pytorch_lightning import Callback

from .lightning import LightningMonitor


class Monitor(LightningMonitor, Callback):
    __doc__ = LightningMonitor.__doc__
