"""Compact per-sample perturbation storage that follows the data augmentation.

ATTA (Zheng et al. 2020) and ATAS (Huang et al., Alg. 1) carry each training
sample's perturbation from one epoch to the next; APART keeps a learned
per-sample initialisation. docs/CONVENTIONS.md, "Per-sample state": the state is keyed by
dataset index, kept in the *padded* frame of the augmentation, and follows the
same crop and flip as the image (inverted when written back), as in the ATAS
code (``aug`` / ``inverse_aug``).

Storage is one signed byte per input dimension (``int8``, value ``q`` stands for
``q / 127 * scale``), not a float32 copy of the data set: CIFAR-10 in the 40x40
padded frame takes 240 MB, Fashion-MNIST 23 MB. The quantisation step
(``scale / 127``; for ATAS ``eps / 127``) is far below any step size the
methods take, and rounding is to nearest (deterministic).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..checkpoint import checkpointable
from ..data import as_meta, crop_like
from ..data import uncrop_into as data_uncrop_into

_Q = 127.0


def _centre(frame: Tensor, size: tuple[int, int]) -> tuple[slice, slice]:
    ph, pw = (frame.shape[-2] - size[0]) // 2, (frame.shape[-1] - size[1]) // 2
    return slice(ph, ph + size[0]), slice(pw, pw + size[1])


def split_meta(index: Any) -> tuple[Tensor | None, Any]:
    """``(indices, aug)`` from a LongTensor, a ``SampleMeta`` or None (via ``codiag.data.as_meta``)."""
    if index is None:
        return None, None
    meta = as_meta(index)
    return meta.index, meta.aug


def crop(frame: Tensor, aug: Any, size: tuple[int, int]) -> Tensor:
    """Each sample's image-frame view of its padded-frame tensor (``codiag.data.crop_like``).

    Without augmentation parameters (a probe batch, an un-augmented loader) the
    image sits in the centre of the padded frame (offset ``pad``, no flip).
    """
    if aug is None:
        rows, cols = _centre(frame, size)
        return frame[..., rows, cols]
    return crop_like(aug, frame)


def uncrop_into(frame: Tensor, aug: Any, image: Tensor) -> Tensor:
    """Write image-frame values back into the padded frame (inverse of :func:`crop`); returns ``frame``."""
    if aug is None:
        rows, cols = _centre(frame, tuple(image.shape[-2:]))
        frame[..., rows, cols] = image.to(frame.dtype)
        return frame
    return data_uncrop_into(aug, frame, image)


@checkpointable
class SampleStore:
    """Per-sample tensors in the padded frame, stored as int8 with a fixed ``scale``.

    Created lazily by the methods on the first batch (when the image shape and
    padding are known). ``init`` is ``"uniform"`` (U[-scale, scale], ATAS Alg. 1
    line 2), ``"normal"`` (scale * N(0, 1), APART's code), ``"sign"`` (random corners
    +-scale, FGSM-PGI's first priors) or ``"zero"``. ``dtype``
    int8 quantises to ``scale / 127``; a floating dtype (APART: float16) keeps the
    values themselves, for state whose values are far below its range.
    """

    def __init__(self, num_samples: int, image_shape: tuple[int, int, int], pad: int, scale: float,
                 device: torch.device, generator: torch.Generator, init: str = "uniform",
                 dtype: torch.dtype = torch.int8) -> None:
        c, h, w = image_shape
        self.image_shape = (c, h, w)
        self.pad = pad
        self.scale = float(scale)
        self.init = init
        self.data = torch.zeros((num_samples, c, h + 2 * pad, w + 2 * pad), dtype=dtype, device=device)
        self.reset(generator)

    @property
    def quantised(self) -> bool:
        return not self.data.dtype.is_floating_point

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def reset(self, generator: torch.Generator) -> None:
        """Re-initialise every sample (ATTA/ATAS reset every ``reset_every`` epochs)."""
        if self.init == "zero":
            self.data.zero_()
            return
        # chunked so that no float32 copy of the whole data set is ever materialised
        n = self.data.shape[0]
        for s in range(0, n, 4096):
            chunk = self.data[s:s + 4096]
            if self.init == "normal":
                u = torch.randn(chunk.shape, generator=generator, device=chunk.device)
            elif self.init == "sign":
                u = torch.rand(chunk.shape, generator=generator, device=chunk.device)
                u = torch.where(u < 0.5, -1.0, 1.0)
            else:
                u = torch.rand(chunk.shape, generator=generator, device=chunk.device) * 2 - 1
            chunk.copy_(torch.round(u * _Q).to(torch.int8) if self.quantised else u * self.scale)

    def read(self, index: Tensor, aug: Any, dtype: torch.dtype = torch.float32) -> Tensor:
        """Image-frame values of samples ``index`` under augmentation ``aug``."""
        idx = index.to(self.data.device)
        frame = self.data[idx].to(dtype)
        if self.quantised:
            frame = frame * (self.scale / _Q)
        return crop(frame, aug, self.image_shape[1:])

    def write(self, index: Tensor, aug: Any, values: Tensor) -> None:
        """Store image-frame ``values`` of samples ``index`` (pixels outside the crop keep their value)."""
        idx = index.to(self.data.device)
        if self.quantised:
            q = torch.round(values.detach().float().clamp(-self.scale, self.scale) * (_Q / self.scale)).to(torch.int8)
        else:
            q = values.detach().to(self.data.dtype)
        frame = self.data[idx]
        uncrop_into(frame, aug, q)
        self.data[idx] = frame


def ensure_store(store: SampleStore | None, num_samples: int | None, x: Tensor, aug: Any, scale: float,
                 generator: torch.Generator, init: str = "uniform", dtype: torch.dtype = torch.int8
                 ) -> SampleStore:
    """Return ``store`` or create it for ``x``'s image shape and ``aug``'s padding."""
    if store is not None:
        return store
    if num_samples is None:
        raise ValueError("this method keeps per-sample state: pass num_samples=len(train_set) "
                         "to get_method (the trainer does)")
    pad = int(aug.pad) if aug is not None else 0
    return SampleStore(int(num_samples), tuple(x.shape[1:]), pad, scale, x.device, generator, init, dtype)
