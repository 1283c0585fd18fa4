import gzip
import hashlib
import pickle
import urllib.error

import numpy as np
import pytest
import torch
import torchvision

import cnnlib
from cnnlib import data as D


@pytest.fixture(scope="module")
def digits():
    cnnlib.setup(verbose=False)
    return cnnlib.load("digits")


def test_digits_are_embedded_real_images_with_a_fixed_split(digits):
    assert digits.image_shape == (1, 8, 8) and digits.num_classes == 10
    assert len(digits.x_train) == 1437 and len(digits.x_test) == 360
    again = cnnlib.load("digits")
    assert torch.equal(digits.x_test, again.x_test) and torch.equal(digits.y_train, again.y_train)
    # stratified: every class in both splits; normalized with the training statistics
    assert set(digits.y_test.tolist()) == set(range(10))
    assert abs(digits.x_train.mean().item()) < 1e-5 and abs(digits.x_train.std().item() - 1) < 1e-3
    assert digits.device.type == "cpu"


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; known datasets: digits, fashion-mnist, cifar10, cifar100"):
        cnnlib.load("mnist")


def test_resize_subset_and_denormalize(digits):
    big = digits.resize(32)
    assert big.image_shape == (1, 32, 32) and torch.equal(big.y_test, digits.y_test)
    small = digits.subset(train=100, test=50, seed=1)
    assert len(small.x_train) == 100 and len(small.x_test) == 50
    assert torch.equal(small.x_train, digits.subset(train=100, test=50, seed=1).x_train)
    img = digits.denormalize(digits.x_train[:5])
    assert img.min() >= -1e-5 and img.max() <= 1 + 1e-5
    assert digits.fingerprint() == cnnlib.load("digits").fingerprint() != small.fingerprint()


def test_pad_and_crop_translates_each_image_by_its_own_shift():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5)
    g = torch.Generator().manual_seed(0)
    shifts = torch.randint(0, 3, (2, 2), generator=torch.Generator().manual_seed(0))
    out = D.augment(x, flip=False, pad=1, generator=g)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(2):
        dy, dx = shifts[0, i].item(), shifts[1, i].item()
        assert torch.equal(out[i], padded[i, :, dy:dy + 5, dx:dx + 5])


def test_flip_mirrors_about_half_of_the_batch():
    x = torch.randn(400, 3, 4, 4)
    out = D.augment(x, flip=True, pad=0, generator=torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, xi.flip(2)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert bool((flipped | kept).all()) and 150 < int(flipped.sum()) < 250


def test_batches_cover_the_data_once_per_epoch():
    x, y = torch.arange(10).float(), torch.arange(10)
    seen = torch.cat([yb for _, yb in D.batches(x, y, 3, shuffle=True, generator=torch.Generator())])
    assert sorted(seen.tolist()) == list(range(10))
    assert [len(b) for b, _ in D.batches(x, y, 3, drop_last=True)] == [3, 3, 3]


def test_photo_is_a_real_bundled_image():
    img = cnnlib.photo("astronaut", size=64)
    assert img.shape == (3, 64, 64) and 0 <= img.min() and img.max() <= 1 and img.std() > 0.1
    assert cnnlib.photo("camera", gray=True).shape[0] == 1
    with pytest.raises(ValueError, match="unknown photo 'lena'; bundled photos: astronaut"):
        cnnlib.photo("lena")


# ---------------------------------------------------------------------------------------------
# CIFAR: the real torchvision code path, on a tiny archive in the real on-disk format
# ---------------------------------------------------------------------------------------------

def _write_batch(path, n, rng, label_key):
    entry = {b"batch_label": b"tiny", label_key.encode(): rng.integers(0, 10, n).tolist(),
             "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "filenames": [b"x"] * n}
    # torchvision unpickles with encoding="latin1" and reads str keys "data" and "labels"
    entry = {(k.decode() if isinstance(k, bytes) else k): v for k, v in entry.items()}
    with open(path, "wb") as f:
        pickle.dump(entry, f)
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def tiny_cifar10(tmp_path, monkeypatch):
    """Write cifar-10-batches-py with 5 train batches of 4 images and a test batch of 3, and
    register their md5 sums so torchvision's own integrity check passes."""
    cls = torchvision.datasets.CIFAR10
    folder = tmp_path / cls.base_folder
    folder.mkdir()
    rng = np.random.default_rng(0)
    train = [[name, _write_batch(folder / name, 4, rng, "labels")] for name, _ in cls.train_list]
    test = [[name, _write_batch(folder / name, 3, rng, "labels")] for name, _ in cls.test_list]
    with open(folder / cls.meta["filename"], "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    meta = dict(cls.meta, md5=hashlib.md5((folder / cls.meta["filename"]).read_bytes()).hexdigest())
    monkeypatch.setattr(cls, "train_list", train)
    monkeypatch.setattr(cls, "test_list", test)
    monkeypatch.setattr(cls, "meta", meta)
    monkeypatch.setenv("CNNLIB_DATA", str(tmp_path))
    return tmp_path


def test_cifar10_loads_through_torchvision_from_the_data_folder(tiny_cifar10):
    data = cnnlib.load("cifar10", device="cpu")
    assert data.image_shape == (3, 32, 32) and len(data.x_train) == 20 and len(data.x_test) == 3
    assert data.classes == tuple(f"class{i}" for i in range(10)) and data.flip and data.pad == 4
    raw = torchvision.datasets.CIFAR10(str(tiny_cifar10), train=False)
    assert torch.allclose(data.denormalize(data.x_test[0]),
                          torch.from_numpy(raw.data[0]).permute(2, 0, 1).float() / 255, atol=1e-5)
    assert data.y_test.tolist() == raw.targets


def test_cifar_missing_offline_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLIB_DATA", str(tmp_path))
    with pytest.raises(D.DatasetNotFoundError) as err:
        cnnlib.load("cifar10")
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "cifar-10-python.tar.gz" in msg
    assert "CNNLIB_DATA" in msg


@pytest.fixture
def no_network(monkeypatch):
    """Downloads allowed, but torchvision's downloader fails as it does on a machine offline."""
    monkeypatch.delenv("CNNLIB_OFFLINE")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    for module in (torchvision.datasets.cifar, torchvision.datasets.mnist):
        monkeypatch.setattr(module, "download_and_extract_archive", offline)


def test_cifar_failed_download_is_the_same_clear_error(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("CNNLIB_DATA", str(tmp_path))
    with pytest.raises(D.DatasetNotFoundError, match="download failed: .*no network"):
        cnnlib.load("cifar100")


# --------------------------------------------------------------------------------------------
# Fashion-MNIST: the real IDX reader on tiny files in the real format, written here
# --------------------------------------------------------------------------------------------

def write_idx(path, array, compress=True):
    """An IDX file as LeCun's and Zalando's are: 0x0000, type 0x08, ndim, big-endian dims, bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def write_tiny_fashion_mnist(folder, n_train=30, n_test=20, compress=True):
    rng = np.random.default_rng(0)
    arrays = {"train": (rng.integers(0, 256, (n_train, 28, 28)), np.arange(n_train) % 10),
              "test": (rng.integers(0, 256, (n_test, 28, 28)), (np.arange(n_test) * 3) % 10)}
    suffix = ".gz" if compress else ""
    for split, (images, labels) in D.FASHION_MNIST_FILES.items():
        write_idx(folder / (images + suffix), arrays[split][0], compress)
        write_idx(folder / (labels + suffix), arrays[split][1], compress)
    return arrays


@pytest.fixture
def no_system_fashion_mnist(tmp_path, monkeypatch):
    """Neither Debian's copy nor anything under CNNLIB_DATA: only what a test writes."""
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    monkeypatch.setenv("CNNLIB_DATA", str(tmp_path / "data"))
    D._read_fashion_mnist.cache_clear()
    yield tmp_path
    D._read_fashion_mnist.cache_clear()


def test_read_idx_reads_the_big_endian_header_and_the_bytes(tmp_path):
    a = np.arange(2 * 3 * 5).reshape(2, 3, 5)
    for compress in (True, False):
        path = write_idx(tmp_path / f"a{'.gz' if compress else ''}", a, compress)
        got = D.read_idx(path)
        assert got.dtype == np.uint8 and got.shape == (2, 3, 5) and np.array_equal(got, a)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_loads_from_the_data_folder_in_torchvisions_layout(no_system_fashion_mnist, compress):
    arrays = write_tiny_fashion_mnist(no_system_fashion_mnist / "data" / "FashionMNIST" / "raw", compress=compress)
    data = cnnlib.load("fashion-mnist", device="cpu")
    assert (len(data.x_train), len(data.x_test), data.image_shape) == (30, 20, (1, 28, 28))
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot" and data.num_classes == 10
    assert data.y_train.tolist() == arrays["train"][1].tolist() and data.y_test.tolist() == arrays["test"][1].tolist()
    raw = torch.from_numpy(arrays["test"][0].astype(np.float32) / 255)
    torch.testing.assert_close(data.denormalize(data.x_test)[:, 0], raw, atol=1e-5, rtol=0)
    assert abs(float(data.x_train.mean())) < 1e-5 and data.flip and D.fashion_mnist_available()


def test_fashion_mnist_falls_back_to_debians_folder(no_system_fashion_mnist):
    assert not D.fashion_mnist_available()
    write_tiny_fashion_mnist(no_system_fashion_mnist / "debian", n_train=10, n_test=10)
    assert D.fashion_mnist_available()
    assert len(cnnlib.load("fashion_mnist", device="cpu").x_train) == 10  # underscore spelling too
    write_tiny_fashion_mnist(no_system_fashion_mnist / "data" / "FashionMNIST" / "raw", n_train=12, n_test=10)
    D._read_fashion_mnist.cache_clear()
    assert len(cnnlib.load("fashion-mnist", device="cpu").x_train) == 12  # CNNLIB_DATA comes first


def test_fashion_mnist_missing_names_every_way_to_get_it(no_system_fashion_mnist):
    with pytest.raises(D.DatasetNotFoundError) as err:
        cnnlib.load("fashion-mnist")
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg and str(no_system_fashion_mnist / "debian") in msg
    assert str(no_system_fashion_mnist / "data" / "FashionMNIST" / "raw") in msg and "train-images-idx3-ubyte.gz" in msg
    assert "downloads them" in msg and "switched off" in msg


def test_fashion_mnist_failed_download_is_the_same_clear_error(no_system_fashion_mnist, no_network):
    with pytest.raises(D.DatasetNotFoundError, match="(?s)download failed: .*no network.*apt-get install"):
        cnnlib.load("fashion-mnist")


@pytest.mark.parametrize("damage", ["truncated gzip", "truncated data", "not idx", "wrong labels"])
def test_a_corrupt_fashion_mnist_file_is_a_clear_error_naming_it(no_system_fashion_mnist, damage):
    folder = no_system_fashion_mnist / "data" / "FashionMNIST" / "raw"
    write_tiny_fashion_mnist(folder)
    path = folder / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    if damage == "truncated gzip":
        path.write_bytes(path.read_bytes()[:-20])
        match = "unreadable"
    elif damage == "truncated data":
        path.write_bytes(gzip.compress(raw[:-100]))
        match = "holds 23,436 bytes but its header promises 23,536"
    elif damage == "not idx":
        path.write_bytes(gzip.compress(b"<html>404</html>"))
        match = "is not an IDX file"
    else:
        path = folder / "train-labels-idx1-ubyte.gz"
        write_idx(path, np.full(30, 12))
        match = "labels in 0–9"
    with pytest.raises(D.CorruptDatasetError, match=match) as err:
        cnnlib.load("fashion-mnist")
    assert str(path if damage != "wrong labels" else folder) in str(err.value)


@pytest.mark.skipif(not D.DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debians_fashion_mnist_is_the_real_dataset():
    data = cnnlib.load("fashion-mnist", device="cpu")
    assert (len(data.x_train), len(data.x_test), data.image_shape) == (60000, 10000, (1, 28, 28))
    assert torch.bincount(data.y_test).tolist() == [1000] * 10
