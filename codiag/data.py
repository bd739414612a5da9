"""Datasets held in memory as uint8 tensors, and a batch loader built on tensor ops.

Every dataset is read once through torchvision (``download=False`` unless the
caller passes ``download=True``) and kept as ``images`` uint8 ``(N, C, H, W)``
and ``labels`` int64 ``(N,)``. Inputs are in [0, 1]; normalisation is the
model's first layer (``codiag.models.Normalize``) so that eps stays in pixel
units.

Fashion-MNIST, the embedded default, comes from the Debian package
``dataset-fashion-mnist`` (gzipped IDX files under
``/usr/share/datasets/fashion-mnist``). torchvision's IDX reader does not open
``.gz`` files, so they are decompressed once into a user cache directory
(``$CODIAG_CACHE``, else ``$XDG_CACHE_HOME/codiag``, else ``~/.cache/codiag``);
nothing is ever written next to the source files.

The loader (:func:`make_loader`) gathers batches by index and augments them
batched (Wong et al. 2020 and GradAlign's data code: zero-pad 4, random 32x32
crop, random horizontal flip for CIFAR; SVHN and MNIST-like sets are not
flipped), drawing all randomness from its own ``torch.Generator``, so it never
touches the global RNG and a seed fixes every epoch's order and crops. Each
sample's crop offsets and flip are recorded (:class:`AugParams`) so that
per-sample state kept in the padded frame (ATTA, ATAS, APART) can follow the
image: :func:`crop_like` and :func:`uncrop_into`.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import UsageError

__all__ = [
    "DATASETS", "DataSpec", "dataset_spec", "load_dataset", "InMemoryDataset", "train_val_split",
    "AugParams", "SampleMeta", "as_meta", "make_loader", "BatchLoader", "crop_like", "uncrop_into",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_APT = "apt-get install -y dataset-fashion-mnist"
PAD = 4  # zero padding before the random crop (Wong et al. 2020; GradAlign; ATAS)


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about a dataset: shape, classes and channel statistics."""
    name: str
    channels: int
    size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)


_SPECS = {
    # Grey-scale sets are not normalised, as in GradAlign's code (mu 0, std 1), so the
    # first-layer filters act on raw pixels, as in GradAlign's filter figures (Fig. 5, 7).
    "fashion_mnist": DataSpec("fashion_mnist", 1, 28, 10, (0.0,), (1.0,)),
    "mnist": DataSpec("mnist", 1, 28, 10, (0.0,), (1.0,)),
    # Wong et al.'s fast_adversarial (cifar10_mean / cifar10_std): per-channel
    # mean and std over all training pixels (checked against the data in the tests).
    "cifar10": DataSpec("cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    # The commonly used per-channel statistics of the CIFAR-100 and SVHN training sets
    # (not checked here: the tests have no copy of those sets).
    "cifar100": DataSpec("cifar100", 3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": DataSpec("svhn", 3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}
DATASETS = frozenset(_SPECS)
_FLIP = {"cifar10", "cifar100"}  # SVHN digits and MNIST-like sets are not flipped (GradAlign data.py)
_TV_CLASS = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST", "cifar10": "CIFAR10",
             "cifar100": "CIFAR100", "svhn": "SVHN"}
_TITLE = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST", "cifar10": "CIFAR-10",
          "cifar100": "CIFAR-100", "svhn": "SVHN"}


def _canonical(name: str) -> str:
    """``"Fashion-MNIST"``, ``"fashion_mnist"``, ``"CIFAR-10"`` ... -> the DATASETS key."""
    key = str(name).lower().replace("-", "").replace("_", "")
    for canonical in _SPECS:
        if canonical.replace("_", "") == key:
            return canonical
    raise UsageError(f"unknown dataset {name!r}; choose from {', '.join(sorted(DATASETS))}")


def dataset_spec(name: str) -> DataSpec:
    """The :class:`DataSpec` of dataset ``name`` (channels, size, classes, mean, std)."""
    return _SPECS[_canonical(name)]


# ---------------------------------------------------------------------------------------------
# in-memory dataset
# ---------------------------------------------------------------------------------------------
class InMemoryDataset(torch.utils.data.Dataset):
    """A dataset held as ``images`` uint8 (N, C, H, W) and ``labels`` int64 (N,).

    ``dataset[i]`` is ``(image float32 in [0, 1] (C, H, W), label, i)``; ``i`` is
    the position in this dataset, the key of per-sample method state.
    ``source_index`` maps positions back to the file's order (after a
    :func:`train_val_split`).
    """

    def __init__(self, images: Tensor, labels: Tensor, spec: DataSpec, train: bool = True,
                 source_index: Tensor | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.spec = spec
        self.train = train
        self.source_index = torch.arange(len(images)) if source_index is None else source_index

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        i = int(i)
        return self.images[i].float().div_(255), self.labels[i], i

    def subset(self, index: Tensor) -> "InMemoryDataset":
        """A new dataset with the samples at positions ``index`` (copied, so the rest can be freed)."""
        index = torch.as_tensor(index, dtype=torch.long)
        return InMemoryDataset(self.images[index].clone(), self.labels[index].clone(), self.spec,
                               self.train, self.source_index[index].clone())

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return f"InMemoryDataset({self.spec.name}, {split}, n={len(self)}, shape={tuple(self.images.shape[1:])})"


def train_val_split(dataset: InMemoryDataset, val: int | float = 0.1,
                    seed: int = 0) -> tuple[InMemoryDataset, InMemoryDataset]:
    """Split ``dataset`` into (train, validation) parts by a seeded random choice of indices.

    ``val`` is a count or a fraction of the dataset. Both parts keep the
    original order; ``source_index`` records where each sample came from.
    Hyperparameters are chosen on the validation part, never on the test set.
    """
    n = len(dataset)
    n_val = int(round(val * n)) if isinstance(val, float) else int(val)
    if not 0 < n_val < n:
        raise UsageError(f"validation split must leave both parts non-empty, got {val} of {n} samples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    val_index, _ = perm[:n_val].sort()
    train_index, _ = perm[n_val:].sort()
    return dataset.subset(train_index), dataset.subset(val_index)


# ---------------------------------------------------------------------------------------------
# reading files through torchvision
# ---------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where decompressed copies go: ``$CODIAG_CACHE``, ``$XDG_CACHE_HOME/codiag`` or ``~/.cache/codiag``."""
    if os.environ.get("CODIAG_CACHE"):
        return Path(os.environ["CODIAG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "codiag"


def _idx_names() -> list[str]:
    # torchvision's MNIST classes check that all four files exist, whatever the split
    return [f"{p}-{k}" for p in ("train", "t10k") for k in ("images-idx3-ubyte", "labels-idx1-ubyte")]


def _find_idx(folder: Path) -> dict[str, Path] | None:
    """Each IDX file in ``folder``, plain or gzipped; None unless all four are there."""
    found = {}
    for name in _idx_names():
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                found[name] = candidate
                break
        else:
            return None
    return found


def _materialise(files: dict[str, Path], cls_name: str) -> Path:
    """Decompress (or copy) ``files`` into a cache root in torchvision's layout; return that root.

    The cache key is the source folder, and a copy older than its source is
    redone. Files are written to a temporary name and renamed, so a concurrent
    reader never sees half a file.
    """
    source = next(iter(files.values())).parent.resolve()
    root = cache_dir() / "idx" / hashlib.sha1(str(source).encode()).hexdigest()[:12]
    raw = root / cls_name / "raw"
    try:
        raw.mkdir(parents=True, exist_ok=True)
        for name, src in files.items():
            dst = raw / name
            if dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime:
                continue
            fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{name}.")
            try:
                with os.fdopen(fd, "wb") as out, (gzip.open if src.suffix == ".gz" else open)(src, "rb") as inp:
                    shutil.copyfileobj(inp, out, 1 << 20)
            except (EOFError, zlib.error, gzip.BadGzipFile) as e:
                os.unlink(tmp)
                raise UsageError(f"cannot decompress {src}: {e} (a truncated or corrupt file?)") from None
            except BaseException:
                os.unlink(tmp)
                raise
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the source was world-readable
            os.replace(tmp, dst)
    except OSError as e:
        raise UsageError(f"cannot decompress {source} into the cache {root}: {e.strerror or e}; "
                         f"set CODIAG_CACHE to a writable folder") from None
    return root


def _idx_root(name: str, root: str | os.PathLike | None) -> Path | None:
    """A root from which torchvision's (Fashion)MNIST class reads ``name``; None if the files are missing.

    Looked for, in order: ``root/<Class>/raw`` (torchvision's layout), ``root``
    itself (a flat folder such as Debian's), and, for Fashion-MNIST without a
    root, ``FASHION_MNIST_DIR``. Only the torchvision layout with uncompressed
    files is read in place; anything else is decompressed into the cache.
    """
    cls_name = _TV_CLASS[name]
    if root is not None:
        folders = [Path(root) / cls_name / "raw", Path(root)]
    else:
        folders = [FASHION_MNIST_DIR] if name == "fashion_mnist" else []
    for i, folder in enumerate(folders):
        files = _find_idx(folder)
        if files is None:
            continue
        if root is not None and i == 0 and all(f.suffix != ".gz" for f in files.values()):
            return Path(root)
        return _materialise(files, cls_name)
    return None


def _check_idx_sizes(tv_root: Path, cls_name: str) -> None:
    """UsageError naming the file when an IDX file is shorter than its header announces (a cut
    copy or download): torchvision would only say the data set is "not found or corrupted"."""
    for name in _idx_names():
        file = tv_root / cls_name / "raw" / name
        try:
            with open(file, "rb") as f:
                head = f.read(4)
                ndim = head[3] if len(head) == 4 else 0
                dims = struct.unpack(f">{ndim}I", f.read(4 * ndim)) if ndim else ()
            size = file.stat().st_size
        except (OSError, struct.error):
            continue   # absent or unreadable: torchvision's own error says so
        expected = 4 + 4 * len(dims) + math.prod(dims)
        if len(head) < 4 or len(dims) < ndim or size < expected:
            raise UsageError(f"{file} is truncated: {size} bytes, its header announces {expected}; "
                             "copy or download it again")


def _missing(name: str, root: str | os.PathLike | None, download: bool, train: bool = True) -> UsageError:
    """The one-line error for missing files: the expected path and how to get them."""
    title = _TITLE[name]
    if name == "fashion_mnist":
        where = (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz" if root is None
                 else Path(root) / "FashionMNIST" / "raw" / "train-images-idx3-ubyte")
        return UsageError(f"{title} not found: expected {where}; install it with "
                          f"`{FASHION_MNIST_APT}` or give root=DIR holding DIR/FashionMNIST/raw/")
    if root is None:
        return UsageError(f"{title} needs root=DIR (torchvision's layout) or download=True")
    sub = {"mnist": Path("MNIST") / "raw" / "train-images-idx3-ubyte", "cifar10": Path("cifar-10-batches-py"),
           "cifar100": Path("cifar-100-python"), "svhn": Path(f"{'train' if train else 'test'}_32x32.mat")}[name]
    hint = "" if download else "; pass download=True to fetch it"
    return UsageError(f"{title} not found or failed torchvision's integrity check: expected "
                      f"{Path(root) / sub} (torchvision's layout){hint}")


def _read(name: str, root: str | os.PathLike | None, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    """(images uint8 (N, C, H, W), labels int64) of one split, read through torchvision."""
    # imported here: torchvision's package import loads torch._dynamo (seconds), which
    # `import codiag` and `codiag --help` do not need
    from torchvision import datasets

    cls = getattr(datasets, _TV_CLASS[name])
    try:
        if name in ("fashion_mnist", "mnist"):
            tv_root = _idx_root(name, root)
            if tv_root is None and download:
                tv_root = Path(root) if root is not None else cache_dir() / "download"
                cls(tv_root, train=train, download=True)
            if tv_root is None:
                raise _missing(name, root, download, train)
            _check_idx_sizes(tv_root, _TV_CLASS[name])
            ds = cls(tv_root, train=train, download=False)
            return ds.data.unsqueeze(1).contiguous(), ds.targets.long()
        if root is None and not download:
            raise _missing(name, root, download, train)
        tv_root = Path(root) if root is not None else cache_dir() / "download"
        if name == "svhn":
            ds = cls(tv_root, split="train" if train else "test", download=download)
            return torch.from_numpy(np.ascontiguousarray(ds.data)), torch.from_numpy(ds.labels.astype(np.int64))
        ds = cls(tv_root, train=train, download=download)
        images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        return images, torch.as_tensor(ds.targets, dtype=torch.long)
    except (RuntimeError, OSError) as e:
        if download:  # no network, a failed checksum after the download ...
            raise UsageError(f"could not download {_TITLE[name]}: {str(e).splitlines()[0]}") from None
        if isinstance(e, RuntimeError):
            # torchvision: "Dataset not found or corrupted. You can use download=True to download it"
            raise _missing(name, root, download, train) from None
        raise UsageError(f"cannot read {_TITLE[name]} under {root}: {e}") from None


def load_dataset(name: str, root: str | os.PathLike | None = None, train: bool = True,
                 limit: int | None = None, download: bool = False) -> InMemoryDataset:
    """Read one split of dataset ``name`` into memory; ``limit`` keeps the first ``limit`` samples.

    ``root`` is the user's data folder in torchvision's layout
    (``root/FashionMNIST/raw/...``, ``root/cifar-10-batches-py/...``,
    ``root/train_32x32.mat`` ...). Without a root, Fashion-MNIST is read from the
    Debian package's folder. Missing files raise :class:`UsageError` naming the
    expected path; nothing is downloaded unless ``download=True``.
    """
    key = _canonical(name)
    if limit is not None and int(limit) < 1:
        raise UsageError(f"limit must be a positive number of samples, got {limit}")
    images, labels = _read(key, root, train, download)
    ds = InMemoryDataset(images, labels, _SPECS[key], train=train)
    if limit is not None and int(limit) < len(ds):
        ds = ds.subset(torch.arange(int(limit)))  # a copy, so the full split can be freed
    return ds


# ---------------------------------------------------------------------------------------------
# augmentation bookkeeping
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AugParams:
    """Per-sample augmentation of one batch: crop offsets ``top``/``left`` in the frame padded by
    ``pad`` on each side, then horizontal ``flip`` (bool); each a (B,) tensor."""
    top: Tensor
    left: Tensor
    flip: Tensor
    pad: int


@dataclass(frozen=True)
class SampleMeta:
    """What an indexed loader yields next to (x, y): dataset positions and the batch's augmentation."""
    index: Tensor
    aug: AugParams | None = None


def as_meta(index: Any) -> SampleMeta:
    """A :class:`SampleMeta` from a SampleMeta (returned as is), a LongTensor or a sequence of indices."""
    if isinstance(index, SampleMeta):
        return index
    if isinstance(getattr(index, "index", None), Tensor):  # a SampleMeta look-alike
        return SampleMeta(index.index, getattr(index, "aug", None))
    return SampleMeta(torch.as_tensor(index, dtype=torch.long), None)


def _flat_index(aug: AugParams, shape: torch.Size, size: tuple[int, int], device: torch.device) -> Tensor:
    """(B, C, H*W) positions in the flattened padded frame (B, C, Hp*Wp) of each crop pixel.

    One ``gather``/``scatter`` with these is several times faster than advanced
    indexing with per-sample row and column tensors.
    """
    b, c, _, wp = shape
    h, w = size
    rows = aug.top.to(device).view(-1, 1) + torch.arange(h, device=device)          # (B, H)
    cols = aug.left.to(device).view(-1, 1) + torch.arange(w, device=device)         # (B, W)
    # a flipped image's column j is the crop's column w-1-j
    cols = torch.where(aug.flip.to(device).view(-1, 1).bool(), cols.flip(1), cols)
    return (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)


def crop_like(aug: AugParams | None, padded: Tensor) -> Tensor:
    """Cut each sample's view out of its padded-frame tensor (B, C, H+2p, W+2p), exactly as the
    image was cropped and flipped; returns (B, C, H, W). Without augmentation (``aug`` None) the
    frame is the image frame and ``padded`` is returned unchanged."""
    if aug is None:
        return padded
    b, c, hp, wp = padded.shape
    size = (hp - 2 * aug.pad, wp - 2 * aug.pad)
    index = _flat_index(aug, padded.shape, size, padded.device)
    return padded.reshape(b, c, hp * wp).gather(2, index).view(b, c, *size)


def uncrop_into(aug: AugParams | None, padded: Tensor, cropped: Tensor) -> Tensor:
    """Write image-frame values ``cropped`` (B, C, H, W) back into ``padded`` in place, undoing the
    flip and crop (inverse of :func:`crop_like`); pixels outside the crop keep their value.
    Returns ``padded``."""
    if aug is None:
        return padded.copy_(cropped)
    b, c, hp, wp = padded.shape
    index = _flat_index(aug, padded.shape, tuple(cropped.shape[-2:]), padded.device)
    src = cropped.reshape(b, c, -1).to(padded.dtype)
    if padded.is_contiguous():
        padded.view(b, c, hp * wp).scatter_(2, index, src)
    else:  # reshape would copy: scatter into the copy and write it back
        padded.copy_(padded.reshape(b, c, hp * wp).scatter(2, index, src).view_as(padded))
    return padded


# ---------------------------------------------------------------------------------------------
# the batch loader
# ---------------------------------------------------------------------------------------------
def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for (seed, epoch): epochs differ, and any epoch can be replayed (resume)."""
    digest = hashlib.blake2b(f"codiag-loader:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class BatchLoader:
    """Batches of an :class:`InMemoryDataset` built with tensor ops (see :func:`make_loader`).

    Iterating yields ``(x, y)`` or ``(x, y, SampleMeta)``; ``x`` float32 in [0, 1]
    on ``device``. Each ``iter()`` is one epoch; epoch ``e`` draws its order and
    augmentation from ``torch.Generator().manual_seed(f(seed, e))``, so the global
    RNG is never used and :meth:`set_epoch` replays any epoch, or its tail.
    """

    def __init__(self, dataset: InMemoryDataset, batch_size: int, shuffle: bool, augment: bool = False,
                 with_index: bool = False, seed: int = 0, drop_last: bool = False,
                 device: str | torch.device = "cpu", flip: bool | None = None, pad: int = PAD) -> None:
        if int(batch_size) < 1:
            raise UsageError(f"batch size must be positive, got {batch_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.augment = bool(augment)
        self.with_index = bool(with_index)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.device = torch.device(device)
        spec = getattr(dataset, "spec", None)
        self.flip = (getattr(spec, "name", None) in _FLIP) if flip is None else bool(flip)
        self.pad = int(pad)
        self.epoch = 0
        self._start = 0      # the batch the next iter() starts at (set_epoch)
        self._tensors: tuple[Tensor, Tensor] | None = None
        self._lut: Tensor | None = None

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Make the next ``iter()`` epoch ``epoch`` (to resume a run with the same batches), from its
        batch ``start`` on: the epoch's order and augmentation, without its first ``start`` batches."""
        if int(start) < 0:
            raise UsageError(f"start must be a batch index >= 0, got {start}")
        self.epoch, self._start = int(epoch), int(start)

    def __iter__(self) -> Iterator[tuple]:
        gen = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        self.epoch += 1
        start, self._start = self._start, 0
        return self._batches(gen, start)

    def _to_float(self, x: Tensor) -> Tensor:
        """uint8 -> float32 in [0, 1] through a 256-entry table divided on the CPU: CUDA divides by
        a scalar as a multiplication by its reciprocal, which differs from the CPU's true division
        in the last bit, so the same seed would give other images on a GPU."""
        if self._lut is None:
            self._lut = (torch.arange(256, dtype=torch.float32) / 255).to(self.device)
        return self._lut[x.long()]

    def _on_device(self) -> tuple[Tensor, Tensor]:
        # copied once: a uint8 CIFAR-10 is 150 MB, and gathering on the device avoids a
        # host-to-device copy per batch
        if self._tensors is None:
            self._tensors = (self.dataset.images.to(self.device), self.dataset.labels.to(self.device))
        return self._tensors

    def _batches(self, gen: torch.Generator, start: int = 0) -> Iterator[tuple]:
        images, labels = self._on_device()
        n = len(images)
        # the order and the augmentation are drawn on the CPU generator whatever the device, then
        # moved, so a CUDA loader yields the CPU loader's batches for the same seed
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        if self.augment:
            # drawn for the whole epoch at once: three small host-to-device copies per epoch
            span = 2 * self.pad + 1
            top = torch.randint(0, span, (n,), generator=gen)
            left = torch.randint(0, span, (n,), generator=gen)
            flip = torch.rand(n, generator=gen) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
            top, left, flip = top.to(self.device), left.to(self.device), flip.to(self.device)
        order = order.to(self.device)
        stop = n - n % self.batch_size if self.drop_last else n
        for s in range(start * self.batch_size, stop, self.batch_size):
            idx = order[s:s + self.batch_size]
            x = images.index_select(0, idx)  # index_select skips advanced indexing's overhead
            aug = None
            if self.augment:
                sl = slice(s, s + len(idx))
                aug = AugParams(top[sl], left[sl], flip[sl], self.pad)
                x = crop_like(aug, F.pad(x, (self.pad,) * 4))  # zero padding, as the papers' RandomCrop
            x = self._to_float(x)
            y = labels.index_select(0, idx)
            yield (x, y, SampleMeta(idx, aug)) if self.with_index else (x, y)


def make_loader(dataset: InMemoryDataset, batch_size: int, shuffle: bool, augment: bool = False,
                with_index: bool = False, seed: int = 0, drop_last: bool = False,
                device: str | torch.device = "cpu", flip: bool | None = None) -> BatchLoader:
    """A :class:`BatchLoader` over ``dataset``: batches gathered by index, optionally augmented.

    ``augment``: zero-pad 4, random crop back to the image size, and (``flip``,
    by default for CIFAR-10/100 only) a random horizontal flip, batched (Wong et
    al. 2020; GradAlign). ``with_index`` adds a :class:`SampleMeta` with each
    sample's dataset position and augmentation. Shuffling and augmentation use
    the loader's own generator seeded by ``seed`` and reshuffle every epoch.
    """
    return BatchLoader(dataset, batch_size, shuffle, augment=augment, with_index=with_index, seed=seed,
                       drop_last=drop_last, device=device, flip=flip)
