"""``Monitor``: :func:`codiag.monitor` as a Hugging Face ``transformers.TrainerCallback``.

For image classifiers trained with ``Trainer``, the attack written where users write
it, in a ``compute_loss`` override::

    from codiag.integrations.hf import Monitor
    trainer = FGSMTrainer(model=model, args=args, train_dataset=train_set,
                          callbacks=[Monitor("runs/fgsm", eps=8/255, probe_data=test_set, stop_on_co=True)])
    trainer.train()

The monitor starts at ``on_train_begin`` on the ``model`` and ``optimizer`` the Trainer
hands its callbacks (the torch optimizer inside accelerate's wrapper: steps are real
optimizer steps, so gradient accumulation counts as in a plain loop). Probe data:
``probe_data`` (the eval set: the Trainer gives callbacks no eval loader at the start),
else the training set; training points from the Trainer's training loader. Datasets
whose items are dicts (``{"pixel_values": x, "labels": y}``, what ``Trainer``'s
collator takes) are read through ``input_key`` / ``label_key``; model outputs with a
``logits`` field are read through it. Probe events run at epoch ends (or every N
optimizer steps); ``stop_on_co=True`` sets ``control.should_training_stop`` once the
alarm fired; the run is closed at ``on_train_end``. The Trainer has no exception hook:
if training raises, call ``monitor.close("failed")`` (else the run stays "running").
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor
from transformers import TrainerCallback

from .base import MonitorCallback


def logits(output: Any) -> Tensor:
    """The logits of a model output: a tensor, a ``ModelOutput``/dict with ``logits``, or a tuple's first."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)):
        return output[0]
    return output   # refused, with its type, at the step-0 event


class Pairs:
    """A dataset of dict items seen as ``(x, y)`` pairs: the monitor reads its probe points by index."""

    def __init__(self, dataset: Any, input_key: str, label_key: str) -> None:
        self.items, self.keys = dataset, (input_key, label_key)   # not .dataset: read through this view

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        item = self.items[i]
        return (item[self.keys[0]], item[self.keys[1]]) if isinstance(item, Mapping) else item


def as_pairs(data: Any, input_key: str, label_key: str) -> Any:
    """``data`` (a loader, a dataset, tensors) as the monitor reads it: dict items become pairs."""
    dataset = getattr(data, "dataset", data)
    if hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__") and len(dataset) \
            and not isinstance(data, (tuple, list)) and isinstance(dataset[0], Mapping):
        return Pairs(dataset, input_key, label_key)
    return data


class Monitor(MonitorCallback, TrainerCallback):
    """A ``TrainerCallback`` running :func:`codiag.monitor` on the Trainer's model and optimizer.

    Arguments: those of :func:`codiag.monitor` less ``model`` and ``optimizer``, plus
    ``stop_on_co`` and ``input_key`` / ``label_key`` (the fields of dict items;
    ``"pixel_values"`` and ``"labels"``).
    """

    def __init__(self, run_dir: Any, eps: float, *args: Any, input_key: str = "pixel_values",
                 label_key: str = "labels", **kwargs: Any) -> None:
        super().__init__(run_dir, eps, *args, **kwargs)
        self.keys = (input_key, label_key)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       train_dataloader: Any = None, **kwargs: Any) -> None:
        train_data = self.train_data if self.train_data is not None else train_dataloader
        self.start_monitor(model, optimizer, as_pairs(self.probe_data, *self.keys),
                           as_pairs(train_data, *self.keys), output_fn=logits)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._stop(control)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.running:
            self.monitor.epoch_end()
        self._stop(control)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close("finished")

    def _stop(self, control: Any) -> None:
        self.take_metrics()   # the Trainer's loggers are not fed (see the sinks of codiag.monitor)
        if self.stop_on_co and self.co_detected:
            control.should_training_stop = True
