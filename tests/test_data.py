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
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; known datasets: digits, cifar10, cifar100"):
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


def test_cifar_failed_download_is_the_same_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLIB_DATA", str(tmp_path))
    monkeypatch.delenv("CNNLIB_OFFLINE")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    with pytest.raises(D.DatasetNotFoundError, match="download failed: .*no network"):
        cnnlib.load("cifar100")
