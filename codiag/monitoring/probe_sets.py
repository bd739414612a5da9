"""Probe-set selection: the fixed points every probe event measures, copied out once at the start.

``probe_data`` / ``train_data`` may be a DataLoader-like object with ``.dataset``
(read by index: the user's loader is never iterated, since a shuffling DataLoader
draws from the global RNG when iterated), a map-style dataset, or a tuple
``(x, y[, index])`` of tensors. Each point is read once, with whatever transform
the dataset applies (a random augmentation is applied once, with a fixed seed,
and frozen into the copy), inside :func:`~codiag.monitoring.isolation.isolated_rng`
so that the reads cannot consume the user's global RNG.

Selection (``probe_select``): ``"first"`` takes the first ``n`` points;
``"balanced"`` takes, class after class in turn, the first points of each class
in dataset order (deterministic), so a class-sorted test set still gives every
class. A probe set holding fewer than half of the dataset's classes warns.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import UsageError
from ..probes.base import ProbeSet
from ..tensors import eval_mode, isolated_rng
from .isolation import Normalization


def _as_tensor(v: Any) -> Tensor:
    if isinstance(v, Tensor):
        return v
    if isinstance(v, np.ndarray):
        return torch.from_numpy(v)
    return torch.as_tensor(v)


def _labels(dataset: Any) -> Tensor | None:
    """All labels of a dataset without reading its images, when it exposes them."""
    tensors = getattr(dataset, "tensors", None)   # torch.utils.data.TensorDataset
    candidates = [tensors[1]] if isinstance(tensors, (tuple, list)) and len(tensors) >= 2 else []
    candidates += [getattr(dataset, attr, None) for attr in ("targets", "labels", "y")]
    for v in candidates:
        if v is not None and not callable(v):
            try:
                t = _as_tensor(v).reshape(-1)
            except (TypeError, ValueError, RuntimeError):
                continue
            if len(t) == len(dataset):
                return t.long()
    return None


def balanced_indices(labels: Tensor, n: int) -> list[int]:
    """Class-stratified, deterministic: round-robin over classes, each class in dataset order."""
    labels = labels.reshape(-1).cpu()
    per_class = [torch.nonzero(labels == c).reshape(-1).tolist() for c in torch.unique(labels).tolist()]
    out: list[int] = []
    depth = 0
    while len(out) < n and any(depth < len(p) for p in per_class):
        out.extend(p[depth] for p in per_class if depth < len(p) and len(out) < n)
        depth += 1
    return sorted(out)


def _item_reader(dataset: Any, source: str, batch_fn: Any) -> Any:
    """``i -> (x, y, ...)``: item ``i`` of ``dataset`` through ``batch_fn`` (when given), checked."""
    def read(i: int) -> Any:
        item = dataset[i]
        if batch_fn is not None:
            item = batch_fn(item)
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            if isinstance(item, dict):
                keys = ", ".join(map(repr, item))
                raise UsageError(f"{source}: dataset items are dicts (keys {keys}); pass batch_fn= "
                                 "(item -> (x, y)), e.g. batch_fn=lambda b: (b['image'], b['label'])")
            raise UsageError(f"{source}: dataset items must be (x, y) or (x, y, index)"
                             + ("" if batch_fn is None else ", after batch_fn="))
        return item
    return read


def extract_probe_set(data: Any, n: int, device: torch.device, source: str, select: str = "first",
                      normalization: Normalization | None = None, num_classes: int | None = None,
                      batch_fn: Any = None):
    """``n`` points of ``data`` as a fixed :class:`codiag.probes.base.ProbeSet` on ``device``, in pixels.

    With ``normalization`` the points are mapped back from the user's
    standardized space to pixels. ``num_classes`` (the model's) is the class
    count of the warning when the dataset does not expose its labels. ``batch_fn`` maps each
    dataset item to ``(x, y)`` (datasets that yield dicts). The pixels must lie in [0, 1] (eps is in pixel
    units): otherwise a one-line UsageError names ``normalization=``.
    """
    if data is None:
        return None
    norm = normalization or Normalization(None)
    all_labels: Tensor | None = None
    with isolated_rng(device, seed=0), torch.no_grad():
        if isinstance(data, (tuple, list)) and len(data) in (2, 3) and all(
                isinstance(t, (Tensor, np.ndarray)) for t in data):
            x_all, y_all = _as_tensor(data[0]), _as_tensor(data[1]).reshape(-1)
            all_labels = y_all
            idx = (list(range(min(n, len(x_all)))) if select == "first" else balanced_indices(y_all, n))
            x, y = x_all[idx], y_all[idx]
            index = _as_tensor(data[2])[idx] if len(data) == 3 else torch.as_tensor(idx)
            kind = "tensors"
        else:
            dataset = getattr(data, "dataset", data)
            if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
                raise UsageError(f"{source}: give a DataLoader, a map-style dataset or (x, y) tensors, "
                                 f"not {type(data).__name__} (its points are read by index)")
            all_labels = _labels(dataset)
            read = _item_reader(dataset, source, batch_fn)
            if select == "balanced":
                if all_labels is None:   # no label attribute: read the labels item by item, once
                    all_labels = torch.as_tensor([int(_as_tensor(read(i)[1])) for i in range(len(dataset))])
                idx = balanced_indices(all_labels, n)
            else:
                idx = list(range(min(int(n), len(dataset))))
            xs, ys = [], []
            for i in idx:
                item = read(i)
                xs.append(_as_tensor(item[0]))
                ys.append(_as_tensor(item[1]))
            if not xs:
                raise UsageError(f"{source} is empty")
            x, y = torch.stack(xs), torch.stack(ys).reshape(-1)
            index = torch.as_tensor(idx)
            kind = type(dataset).__name__
        x = norm.to_pixels(x.to(device=device, dtype=torch.float32)).contiguous()
        y = y.to(device=device, dtype=torch.long)
    if len(x) == 0:
        raise UsageError(f"{source} is empty")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-4 or hi > 1 + 1e-4:  # one check at start: eps is in pixel units
        hint = ("if your loader yields standardized tensors, pass normalization=(mean, std)"
                if normalization is None or normalization.spec is None else
                "check the normalization=(mean, std) given")
        raise UsageError(f"{source}: pixel values span [{lo:.3g}, {hi:.3g}], not [0, 1]; {hint}")
    x = x.clamp(0.0, 1.0)   # undo the rounding of the standardization round trip
    classes_here = int(torch.unique(y).numel())
    classes_all = int(torch.unique(all_labels).numel()) if all_labels is not None else num_classes
    if classes_all is not None and classes_here < classes_all / 2:
        warnings.warn(f"codiag.monitor: the {source} probe set ({len(x)} points, probe_select={select!r}) "
                      f"holds {classes_here} of {classes_all} classes; pass probe_select='balanced' "
                      "(the data looks sorted by class)", UserWarning, stacklevel=4)
    return ProbeSet(x=x, y=y, index=index.to(device), source=f"{source}:{kind}")


def num_classes(view: Any, device: torch.device, *datas: Any) -> int | None:
    """The model's number of logits (one eval forward on one point of tensor data), else None.

    The class count of the few-classes warning when the data do not expose their
    labels; a model that cannot run here is reported, with its cause, at the step-0 event.
    """
    for data in datas:
        x = data[0][:1] if isinstance(data, (tuple, list)) else None
        if isinstance(x, Tensor):
            with isolated_rng(device), eval_mode(view.network), torch.no_grad(), torch.inference_mode(False):
                try:
                    out = view(x.to(device, torch.float32))
                except Exception:   # reported with its cause at the step-0 event
                    return None
            return int(out.shape[-1]) if out.ndim == 2 else None
    return None
