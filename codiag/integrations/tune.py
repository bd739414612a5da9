"""Ray Tune: each probe event's metrics to ``tune.report``, and a ``Stopper`` that ends a trial on the CO alarm.

::

    from codiag.integrations import tune as codiag_tune

    def trainable(config):
        with codiag.monitor(model, optimizer, run_dir, eps=config["eps"], probe_data=test_loader,
                            on_event=codiag_tune.report) as mon:
            for epoch in range(epochs):
                ...                                  # the user's own epoch
                mon.epoch_end()

    tune.Tuner(trainable, param_space=..., run_config=tune.RunConfig(stop=codiag_tune.Stopper())).fit()

``report`` sends one result per probe event (full or light): every value the event
wrote as ``codiag/<probe>/<key>``, ``codiag/step`` and ``codiag/co_alarm`` (1.0 once
the alarm fired). ``Stopper`` ends the trial whose result carries the alarm (other
trials go on). Give each trial its own absolute ``run_dir`` (Tune changes the working directory).
"""
from __future__ import annotations

from typing import Any, Mapping

from ray import tune

from .base import ALARM_KEY, PREFIX, event_metrics

#: trials Tune has ended in this worker: ``tune.report`` ends a stopped trial with ``sys.exit(0)``,
#: and the monitor's final event on the way out must not report to (and wait on) Tune again
_ended: set[str] = set()


def report(event: Mapping[str, Any]) -> None:
    """``on_event=report``: the probe event's metrics to ``tune.report`` (call it from inside a trial).

    When Tune stops the trial (the :class:`Stopper`), ``tune.report`` raises ``SystemExit(0)``:
    the ``with codiag.monitor(...)`` block then closes the run as finished.
    """
    trial = tune.get_context().get_trial_id()
    if trial in _ended:
        return
    try:
        tune.report({**event_metrics(event), PREFIX + "step": int(event["step"]),
                     PREFIX + "epoch": int(event["epoch"])})
    except SystemExit:
        _ended.add(trial)
        raise


class Stopper(tune.Stopper):
    """Stops a trial once a result from :func:`report` carries the CO alarm; never stops the others."""

    def __call__(self, trial_id: str, result: Mapping[str, Any]) -> bool:
        return bool(result.get(ALARM_KEY))

    def stop_all(self) -> bool:
        return False
