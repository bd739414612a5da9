"""Feature maps of the first-layer filters for clean images and for the same images
plus uniform noise U[-eps, eps]. Redraws GradAlign Fig. 7 and 13.

The maps are computed from the recorded last snapshot of the first-layer kernels
(``filters.weight``, and ``filters.bias`` when recorded) applied to the first few
test images of the dataset named in the run's config (read from its data root). No
live model is used; the gradient column of GradAlign Fig. 13 needs the whole
model and is not drawn.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from codiag.data import dataset_spec, load_dataset
from codiag.probes.filters import Filters
from codiag.runs import Run

from . import paper
from .base import Figure, MissingData, fmt_eps, method_label, need_array, needs, save, style, x_of_step
from .filters import pick_filters

N_IMAGES = 2


def _images(run: Run, n: int) -> tuple[np.ndarray, tuple[float, ...], tuple[float, ...]]:
    """(images (n, C, H, W) in [0, 1], mean, std) for the first-layer Normalize."""
    name = run.config.get("dataset")
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    try:
        spec = dataset_spec(name)
        mean, std = tuple(spec.mean), tuple(spec.std)
    except Exception:
        pass
    try:
        ds = load_dataset(name, root=run.config.get("data_root"), train=False, limit=n)
        imgs = np.stack([np.asarray(ds[i][0], float) for i in range(min(n, len(ds)))])
    except Exception as e:  # dataset not readable here: say so in one line
        raise MissingData(f"needs test images of {name!r} (data root "
                          f"{run.config.get('data_root')!r}): {str(e).splitlines()[0][:120]}") from None
    return imgs, mean, std


@needs(Filters.weight)
def feature_maps(run: Run, out_dir: Path) -> Figure:
    """GradAlign Fig. 7 / 13: ReLU(w_i * normalise(x) + b_i) with and without U[-eps, eps] noise,
    for every first-layer filter, at the last snapshot."""
    weights = need_array(run, Filters.weight)
    step = max(weights)
    w = np.asarray(weights[step], float)
    if w.ndim != 4:
        raise MissingData(f"filters.weight has shape {w.shape}, expected (out, in, kh, kw)")
    bias_snaps = run.arrays(Filters.bias.name)
    b = np.asarray(bias_snaps.get(step, np.zeros(w.shape[0])), float) if bias_snaps else np.zeros(w.shape[0])
    imgs, mean, std = _images(run, N_IMAGES)
    if imgs.ndim != 4 or imgs.shape[1] != w.shape[1]:
        raise MissingData(f"images of shape {imgs.shape} do not fit filters of shape {w.shape}")
    eps = float(run.config.get("eps", 8 / 255))
    gen = torch.Generator().manual_seed(0)
    x = torch.as_tensor(imgs, dtype=torch.float32)
    noisy = (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * eps).clamp(0, 1)
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    wt, bt = torch.as_tensor(w, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32).ravel()
    pad = w.shape[-1] // 2
    maps = {k: F.relu(F.conv2d((v - m) / s, wt, bt, padding=pad)).numpy() for k, v in
            (("clean", x), ("noisy", noisy))}
    n_f = min(w.shape[0], 8)
    change = np.abs(maps["noisy"] - maps["clean"]).mean(axis=(0, 2, 3)) / \
        np.maximum(np.abs(maps["clean"]).mean(axis=(0, 2, 3)), 1e-12)
    with style():
        fig, axes = plt.subplots(2 * len(imgs), n_f + 1, figsize=(1.7 * (n_f + 1), 1.75 * 2 * len(imgs)),
                                 squeeze=False)
        for i in range(len(imgs)):
            for r, (kind, src) in enumerate((("clean", x), ("noisy", noisy))):
                row = axes[2 * i + r]
                img = src[i].permute(1, 2, 0).numpy()
                row[0].imshow(img if img.shape[2] == 3 else img[..., 0], cmap=None if img.shape[2] == 3 else "gray")
                row[0].set_ylabel("x" if kind == "clean" else "x + η", fontsize=8)
                for f in range(n_f):
                    vmax = max(maps["clean"][i, f].max(), maps["noisy"][i, f].max()) or 1.0
                    row[f + 1].imshow(maps[kind][i, f], cmap="magma", vmin=0, vmax=vmax)
                    if i == 0 and r == 0:
                        row[f + 1].set_title(f"w{f + 1}", fontsize=8)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        fig.suptitle(f"{method_label(run)}: feature maps at epoch {x_of_step(run, step):g}, "
                     f"η ~ U[−{fmt_eps(eps)}, {fmt_eps(eps)}]", fontsize=9)
        files = save(fig, out_dir, "feature_maps")
    table = pd.DataFrame({"filter": [f"w{f + 1}" for f in range(w.shape[0])],
                          "relative change of the map under noise": change.round(3)})
    _, hi = pick_filters({k: np.asarray(v, float) for k, v in weights.items()})
    notes = [] if bias_snaps else ["no filters.bias recorded: maps drawn with zero bias"]
    return Figure(
        key="feature_maps", title="Feature maps with and without noise", redraws="GradAlign Fig. 7, 13",
        caption=("Odd rows: test images and the ReLU feature maps of each first-layer filter at the "
                 "last snapshot; even rows: the same with uniform noise of radius ε added. The table "
                 "gives each filter's mean relative change under noise (most-grown filter: "
                 f"w{hi + 1}). Redraws GradAlign Fig. 7 and 13 (without the gradient column)."),
        files=files, table=table, paper=paper.GRADALIGN_FEATURES,
        paper_source=paper.GRADALIGN_FEATURES_SOURCE, notes=notes)
