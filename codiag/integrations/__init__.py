"""Adapters that put :func:`codiag.monitor` into the training frameworks users train with.

Each is a thin layer over :class:`codiag.monitoring.Monitor` (same options, same run
directory, same alarm); importing one imports its framework, so import it by its own name:

* :mod:`codiag.integrations.lightning`: ``Monitor``, a ``lightning.pytorch.Callback``
  (:mod:`codiag.integrations.pytorch_lightning` for the ``pytorch_lightning`` package);
* :mod:`codiag.integrations.hf`: ``Monitor``, a ``transformers.TrainerCallback``;
* :mod:`codiag.integrations.tune`: ``report`` (each probe event's metrics to ``tune.report``)
  and ``Stopper`` (ends a trial on the CO alarm).
* :mod:`codiag.integrations.sinks`: the trackers of ``codiag.monitor(..., sinks=[...])``
  (:mod:`~codiag.integrations.tensorboard`, :mod:`~codiag.integrations.wandb`,
  :mod:`~codiag.integrations.mlflow`, or any object with ``log``, ``event`` and ``close``).
"""
