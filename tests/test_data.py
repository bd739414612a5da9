"""codiag.data: reading every dataset through torchvision, the tensor batch loader, augmentation bookkeeping."""
import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from codiag import data
from codiag.data import (
    DATASETS,
    AugParams,
    InMemoryDataset,
    SampleMeta,
    as_meta,
    crop_like,
    dataset_spec,
    load_dataset,
    make_loader,
    train_val_split,
    uncrop_into,
)
from codiag.errors import UsageError


# ---------------------------------------------------------------------------------------------
# helpers: tiny files in torchvision's formats
# ---------------------------------------------------------------------------------------------
def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX (ubyte) file as the (Fashion-)MNIST distributions ship it; gzipped for a .gz name."""
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_idx_set(folder: Path, n_train: int, n_test: int, seed: int, gz: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        ext = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        arrays[prefix] = (images, labels)
    return arrays


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def synthetic(n: int = 40, name: str = "cifar10", seed: int = 0) -> InMemoryDataset:
    g = torch.Generator().manual_seed(seed)
    spec = dataset_spec(name)
    images = torch.randint(0, 256, (n, *spec.input_shape), generator=g, dtype=torch.uint8)
    return InMemoryDataset(images, torch.arange(n) % spec.num_classes, spec)


def naive_crop(padded: torch.Tensor, top: int, left: int, flip: bool, size: int) -> torch.Tensor:
    """One sample's crop by slicing, independent of the library's gather-based code."""
    out = padded[:, top:top + size, left:left + size]
    return out.flip(-1) if flip else out


# ---------------------------------------------------------------------------------------------
# specs
# ---------------------------------------------------------------------------------------------
def test_specs_names_aliases_and_reference_statistics():
    assert DATASETS == {"fashion_mnist", "mnist", "cifar10", "cifar100", "svhn"}
    c10 = dataset_spec("cifar10")
    # Wong et al.'s fast_adversarial cifar10_mean / cifar10_std
    assert (c10.mean, c10.std) == ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
    assert (c10.channels, c10.size, c10.num_classes) == (3, 32, 10)
    assert dataset_spec("CIFAR-100").num_classes == 100
    fm = dataset_spec("Fashion-MNIST")
    assert fm.name == "fashion_mnist" and fm.input_shape == (1, 28, 28)
    assert (fm.mean, fm.std) == ((0.0,), (1.0,))
    for name in DATASETS:
        spec = dataset_spec(name)
        assert len(spec.mean) == len(spec.std) == spec.channels
    with pytest.raises(UsageError, match="unknown dataset 'imagenet'"):
        dataset_spec("imagenet")


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST, the embedded default
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CODIAG_CACHE", str(cache))
        before = sorted((p.name, p.stat().st_size, p.stat().st_mtime) for p in data.FASHION_MNIST_DIR.iterdir())
        train = load_dataset("fashion_mnist")
        test = load_dataset("fashion_mnist", train=False)
        after = sorted((p.name, p.stat().st_size, p.stat().st_mtime) for p in data.FASHION_MNIST_DIR.iterdir())
    return train, test, cache, before, after


def test_fashion_mnist_loads_from_the_debian_package(fashion):
    train, test, _, _, _ = fashion
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.labels.bincount().tolist() == [6000] * 10
    assert test.labels.bincount().tolist() == [1000] * 10
    # the files' order (the first labels of the official release)
    assert train.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert test.labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    x, y, i = train[0]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28) and int(y) == 9 and i == 0
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert train.spec == dataset_spec("fashion_mnist") and train.train and not test.train


def test_fashion_mnist_is_decompressed_into_the_cache_only(fashion):
    _, _, cache, before, after = fashion
    assert before == after  # nothing written next to the package's files
    raws = list(cache.glob("idx/*/FashionMNIST/raw"))
    assert len(raws) == 1
    assert sorted(p.name for p in raws[0].iterdir()) == sorted(data._idx_names())
    assert (raws[0] / "train-images-idx3-ubyte").stat().st_size == 16 + 60000 * 784


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_from_a_data_root(tmp_path, monkeypatch, gz):
    monkeypatch.setenv("CODIAG_CACHE", str(tmp_path / "cache"))
    arrays = write_idx_set(tmp_path / "root" / "FashionMNIST" / "raw", 7, 5, seed=1, gz=gz)
    ds = load_dataset("fashion_mnist", root=tmp_path / "root", train=False)
    assert torch.equal(ds.images[:, 0], torch.from_numpy(arrays["t10k"][0]))
    assert torch.equal(ds.labels, torch.from_numpy(arrays["t10k"][1]).long())
    # plain files in torchvision's layout are read in place, gzipped ones go through the cache
    assert (tmp_path / "cache").exists() == gz


# ---------------------------------------------------------------------------------------------
# MNIST, CIFAR-100, SVHN from tiny files in torchvision's format; CIFAR-10 from the real files
# ---------------------------------------------------------------------------------------------
def test_mnist_from_idx_files_and_limit(tmp_path):
    arrays = write_idx_set(tmp_path / "MNIST" / "raw", 9, 4, seed=2)
    train = load_dataset("mnist", root=tmp_path)
    assert train.images.shape == (9, 1, 28, 28)
    assert torch.equal(train.images[:, 0], torch.from_numpy(arrays["train"][0]))
    assert torch.equal(train.labels, torch.from_numpy(arrays["train"][1]).long())
    first = load_dataset("mnist", root=tmp_path, limit=3)
    assert len(first) == 3 and torch.equal(first.images, train.images[:3])
    assert first.images.untyped_storage().nbytes() == 3 * 784  # a copy, not a view of the full split
    assert len(load_dataset("mnist", root=tmp_path, limit=100)) == 9
    with pytest.raises(UsageError, match="limit"):
        load_dataset("mnist", root=tmp_path, limit=0)


def test_cifar100_from_pickled_batches(tmp_path, monkeypatch):
    from torchvision import datasets
    rng = np.random.default_rng(3)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    written = {}
    for split, n in (("train", 6), ("test", 4)):
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        with open(folder / split, "wb") as f:  # the python version's layout: rows of R, G, B planes
            pickle.dump({"data": images.reshape(n, 3072), "fine_labels": fine,
                         "coarse_labels": [c // 5 for c in fine]}, f)
        written[split] = (images, fine)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    # torchvision checks the official MD5s; without these our tiny files are "corrupted"
    with pytest.raises(UsageError, match="integrity check: expected .*cifar-100-python"):
        load_dataset("cifar100", root=tmp_path)
    monkeypatch.setattr(datasets.CIFAR100, "train_list", [["train", md5(folder / "train")]])
    monkeypatch.setattr(datasets.CIFAR100, "test_list", [["test", md5(folder / "test")]])
    monkeypatch.setattr(datasets.CIFAR100, "meta", {"filename": "meta", "key": "fine_label_names",
                                                    "md5": md5(folder / "meta")})
    for split in ("train", "test"):
        ds = load_dataset("cifar100", root=tmp_path, train=split == "train")
        assert ds.images.shape == (len(written[split][1]), 3, 32, 32) and ds.images.is_contiguous()
        assert torch.equal(ds.images, torch.from_numpy(written[split][0]))
        assert ds.labels.tolist() == written[split][1]
        assert ds.spec.num_classes == 100


def test_svhn_from_mat_files(tmp_path, monkeypatch):
    from scipy.io import savemat
    from torchvision import datasets
    rng = np.random.default_rng(4)
    n = 5
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # SVHN's (H, W, C, N)
    y = np.array([[10], [1], [2], [10], [9]], dtype=np.uint8)  # digit 0 is stored as 10
    savemat(tmp_path / "test_32x32.mat", {"X": x, "y": y})
    monkeypatch.setattr(datasets.SVHN, "split_list", {
        "test": ["unused", "test_32x32.mat", md5(tmp_path / "test_32x32.mat")]})
    ds = load_dataset("svhn", root=tmp_path, train=False)
    assert ds.images.shape == (n, 3, 32, 32)
    assert torch.equal(ds.images, torch.from_numpy(x.transpose(3, 2, 0, 1).copy()))
    assert ds.labels.tolist() == [0, 1, 2, 0, 9]


def test_cifar10_real_files_offline(cifar_root):
    test = load_dataset("cifar10", root=cifar_root, train=False)
    assert test.images.shape == (10000, 3, 32, 32) and test.images.dtype == torch.uint8
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]  # the official test_batch order
    assert test.labels.bincount().tolist() == [1000] * 10
    train = load_dataset("cifar10", root=cifar_root, train=True)
    assert len(train) == 50000 and train.labels[:5].tolist() == [6, 9, 9, 4, 1]
    # the spec's statistics are those of the training pixels (what Normalize assumes)
    # (from a histogram per channel: exact, and no 600 MB float copy)
    values = torch.arange(256, dtype=torch.float64) / 255
    counts = torch.stack([torch.bincount(train.images[:, c].flatten(), minlength=256) for c in range(3)]).double()
    mean = (counts * values).sum(1) / counts.sum(1)
    std = ((counts * (values - mean[:, None]) ** 2).sum(1) / counts.sum(1)).sqrt()
    spec = train.spec
    assert torch.allclose(mean, torch.tensor(spec.mean, dtype=torch.float64), atol=2e-4), mean
    assert torch.allclose(std, torch.tensor(spec.std, dtype=torch.float64), atol=2e-4), std
    # (C, H, W) layout in R, G, B order: the file stores each image as R, G and B planes
    with open(cifar_root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="latin1")["data"][0]
    assert torch.equal(test.images[0], torch.from_numpy(raw.reshape(3, 32, 32)))


# ---------------------------------------------------------------------------------------------
# missing files
# ---------------------------------------------------------------------------------------------
def test_missing_files_raise_usage_error_naming_the_path(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(UsageError) as e:
        load_dataset("fashion_mnist")
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "train-images-idx3-ubyte.gz") in msg
    assert "apt-get install -y dataset-fashion-mnist" in msg and "\n" not in msg
    with pytest.raises(UsageError, match=str(tmp_path / "FashionMNIST" / "raw")):
        load_dataset("fashion_mnist", root=tmp_path)
    with pytest.raises(UsageError, match=str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte")):
        load_dataset("mnist", root=tmp_path)
    with pytest.raises(UsageError, match=str(tmp_path / "cifar-10-batches-py")):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(UsageError, match=str(tmp_path / "test_32x32.mat")):
        load_dataset("svhn", root=tmp_path, train=False)
    with pytest.raises(UsageError, match="root=DIR") as e:   # the library's arguments, not the CLI's flags
        load_dataset("cifar100")
    assert "download=True" in str(e.value) and "--" not in str(e.value)
    assert not any(tmp_path.iterdir())  # nothing was downloaded or created


def test_train_names_its_own_data_root_argument_and_leaves_no_run_dir(tmp_path):
    from codiag.trainer import train
    with pytest.raises(UsageError, match=r"needs data_root=DIR \(torchvision's layout\) or download=True"):
        train({"dataset": "cifar100", "epochs": 0, "out": str(tmp_path / "r")})
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------
# dataset helpers
# ---------------------------------------------------------------------------------------------
def test_getitem_and_train_val_split():
    ds = synthetic(50)
    x, y, i = ds[7]
    assert torch.equal(x, ds.images[7].float() / 255) and int(y) == 7 % 10 and i == 7
    train, val = train_val_split(ds, 0.2, seed=1)
    assert (len(train), len(val)) == (40, 10)
    both = torch.cat([train.source_index, val.source_index])
    assert sorted(both.tolist()) == list(range(50))  # disjoint and complete
    assert torch.equal(val.source_index, val.source_index.sort().values)  # original order kept
    assert torch.equal(val.images, ds.images[val.source_index])
    assert torch.equal(val.labels, ds.labels[val.source_index])
    assert torch.equal(train_val_split(ds, 10, seed=1)[1].source_index, val.source_index)
    assert not torch.equal(train_val_split(ds, 10, seed=2)[1].source_index, val.source_index)
    with pytest.raises(UsageError):
        train_val_split(ds, 50)


# ---------------------------------------------------------------------------------------------
# the loader
# ---------------------------------------------------------------------------------------------
def batches(loader):
    return [tuple(t.clone() if torch.is_tensor(t) else t for t in b) for b in loader]


def test_loader_epochs_cover_the_data_and_reshuffle():
    ds = synthetic(37)
    loader = make_loader(ds, 8, shuffle=True, with_index=True, seed=0)
    assert len(loader) == 5
    orders = []
    for _ in range(2):
        epoch = batches(loader)
        assert [len(b[0]) for b in epoch] == [8, 8, 8, 8, 5]
        index = torch.cat([b[2].index for b in epoch])
        assert sorted(index.tolist()) == list(range(37))
        for x, y, meta in epoch:
            assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
            assert torch.equal(x, ds.images[meta.index].float() / 255)  # no augmentation asked
            assert torch.equal(y, ds.labels[meta.index]) and meta.aug is None
        orders.append(index)
    assert not torch.equal(orders[0], orders[1])
    assert not torch.equal(orders[0], torch.arange(37))
    dropped = make_loader(ds, 8, shuffle=True, drop_last=True)
    assert len(dropped) == 4 and [len(x) for x, _ in dropped] == [8] * 4
    plain = make_loader(ds, 10, shuffle=False)
    assert torch.equal(torch.cat([y for _, y in plain]), ds.labels)


def test_loader_is_seeded_and_leaves_the_global_rng_alone():
    ds = synthetic(30)
    state = torch.get_rng_state()
    runs = []
    for seed in (5, 5, 6):
        loader = make_loader(ds, 7, shuffle=True, augment=True, with_index=True, seed=seed)
        runs.append([batches(loader) for _ in range(2)])
    assert torch.equal(torch.get_rng_state(), state)

    def flat(run):
        return torch.cat([torch.cat([x.flatten(), m.index.float(), m.aug.top.float(), m.aug.left.float(),
                                     m.aug.flip.float()]) for epoch in run for x, _, m in epoch])
    assert torch.equal(flat(runs[0]), flat(runs[1]))
    assert not torch.equal(flat(runs[0]), flat(runs[2]))
    # any epoch can be replayed (resume)
    loader = make_loader(ds, 7, shuffle=True, augment=True, with_index=True, seed=5)
    loader.set_epoch(1)
    assert torch.equal(flat([batches(loader)]), flat([runs[0][1]]))
    # ... or its tail (a roll-back inside an epoch), once: the next epoch is whole again
    loader.set_epoch(1, start=3)
    assert torch.equal(flat([batches(loader)]), flat([runs[0][1][3:]]))
    assert loader.epoch == 2 and len(batches(loader)) == len(loader)
    with pytest.raises(UsageError, match="start"):
        loader.set_epoch(0, start=-1)


@pytest.mark.parametrize("name,flips", [("cifar10", True), ("cifar100", True), ("svhn", False)])
def test_augmentation_is_a_padded_crop_and_flip_recorded_per_sample(name, flips):
    ds = synthetic(64, name)
    loader = make_loader(ds, 16, shuffle=True, augment=True, with_index=True, seed=3)
    tops, flipped = [], []
    for x, _y, meta in loader:
        aug = meta.aug
        assert isinstance(meta, SampleMeta) and isinstance(aug, AugParams) and aug.pad == 4
        assert x.shape == (16, 3, 32, 32)
        padded = F.pad(ds.images[meta.index], (4, 4, 4, 4)).float() / 255
        for k in range(16):
            top, left, flip = int(aug.top[k]), int(aug.left[k]), bool(aug.flip[k])
            assert 0 <= top <= 8 and 0 <= left <= 8
            assert torch.equal(x[k], naive_crop(padded[k], top, left, flip, 32))
        assert torch.equal(crop_like(aug, padded), x)
        tops.append(aug.top)
        flipped.append(aug.flip)
    tops, flipped = torch.cat(tops), torch.cat(flipped)
    assert len(tops.unique()) > 3  # offsets vary
    assert bool(flipped.any()) == flips and bool((~flipped).any())


def test_crop_like_and_uncrop_into_round_trip():
    g = torch.Generator().manual_seed(0)
    b, pad = 6, 4
    aug = AugParams(torch.randint(0, 9, (b,), generator=g), torch.randint(0, 9, (b,), generator=g),
                    torch.tensor([True, False] * 3), pad)
    state = torch.randn(b, 3, 40, 40, generator=g)  # per-sample state in the padded frame
    view = crop_like(aug, state)
    for k in range(b):
        assert torch.equal(view[k], naive_crop(state[k], int(aug.top[k]), int(aug.left[k]), bool(aug.flip[k]), 32))
    # writing the view back changes nothing; writing new values changes exactly the crop
    assert torch.equal(uncrop_into(aug, state.clone(), view), state)
    new = torch.randn(b, 3, 32, 32, generator=g)
    out = uncrop_into(aug, state.clone(), new)
    assert torch.equal(crop_like(aug, out), new)
    inside = uncrop_into(aug, torch.zeros_like(state), torch.ones_like(new)).bool()
    assert torch.equal(out[~inside], state[~inside]) and int(inside.sum()) == b * 3 * 32 * 32
    # a non-contiguous frame (channels-last) is written in place too
    cl = state.clone().contiguous(memory_format=torch.channels_last)
    assert uncrop_into(aug, cl, new) is cl and torch.equal(cl, out)
    # without augmentation the frame is the image frame
    assert crop_like(None, new) is new
    assert torch.equal(uncrop_into(None, torch.zeros_like(new), new), new)


def test_as_meta():
    meta = as_meta(torch.tensor([3, 1]))
    assert isinstance(meta, SampleMeta) and meta.index.tolist() == [3, 1] and meta.aug is None
    assert as_meta(meta) is meta
    assert as_meta([0, 2]).index.dtype == torch.int64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_loader_on_gpu_gives_the_cpu_batches():
    ds = synthetic(40)
    cpu = batches(make_loader(ds, 16, shuffle=True, augment=True, with_index=True, seed=1))
    gpu = batches(make_loader(ds, 16, shuffle=True, augment=True, with_index=True, seed=1, device="cuda"))
    for (xc, yc, mc), (xg, yg, mg) in zip(cpu, gpu):
        assert xg.is_cuda and yg.is_cuda and mg.index.is_cuda and mg.aug.top.is_cuda
        assert torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc) and torch.equal(mg.index.cpu(), mc.index)
