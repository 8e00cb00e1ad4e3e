"""Image data: IDX / CIFAR-pickle parsing, download → verify → cache, and the real files."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from neuralode.data import cifar10 as cifar_mod
from neuralode.data import mnist as mnist_mod
from neuralode.data.cache import ChecksumError, DataUnavailableError, Resource, fetch, fetch_all
from neuralode.data.digits import load_digits
from neuralode.data.mnist import load_mnist, parse_idx, read_idx

SHARED = Path(os.environ.get("NEURALODE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def idx_bytes(arr: np.ndarray) -> bytes:
    codes = {np.dtype("uint8"): 0x08, np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D}
    header = bytes([0, 0, codes[arr.dtype], arr.ndim]) + np.array(arr.shape, ">i4").tobytes()
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    monkeypatch.setenv("NEURALODE_DATA", str(data))
    monkeypatch.setenv("NEURALODE_CACHE", str(cache))
    return data, cache, tmp_path


# ---------------------------------------------------------------- parsing
def test_idx_roundtrip_uint8_images_and_int32(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    p = tmp_path / "imgs-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(idx_bytes(imgs)))
    np.testing.assert_array_equal(read_idx(p), imgs)
    vals = np.arange(-3, 3, dtype=np.int32)
    raw = tmp_path / "vals-idx1"
    raw.write_bytes(idx_bytes(vals))
    np.testing.assert_array_equal(read_idx(raw), vals)


def test_idx_truncated_or_bad_magic_is_rejected():
    data = idx_bytes(np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        parse_idx(data[:-1])
    with pytest.raises(ValueError, match="bad magic"):
        parse_idx(b"\x01\x02" + data[2:])
    with pytest.raises(ValueError, match="type code"):
        parse_idx(b"\x00\x00\x07\x01" + data[4:])


def _cifar_batch(n: int, seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
    y = rng.integers(0, 10, n).tolist()
    return {b"batch_label": b"x", b"labels": y, b"data": x, b"filenames": [b"a"] * n}, x, np.array(y)


def test_cifar_batch_parsing(tmp_path):
    d, x, y = _cifar_batch(4, 0)
    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps(d, protocol=2))
    xs, ys = cifar_mod.parse_cifar_batch(p)
    assert xs.shape == (4, 3, 32, 32) and xs.dtype == np.uint8
    np.testing.assert_array_equal(xs.reshape(4, -1), x)
    np.testing.assert_array_equal(ys, y)
    with pytest.raises(ValueError, match="lacks 'data'"):
        cifar_mod.parse_cifar_batch(pickle.dumps({b"labels": [1]}))


def test_cifar_pickle_archive_loads_through_fetch(dirs, monkeypatch):
    data, cache, _ = dirs
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
            blob = pickle.dumps(_cifar_batch(3, i)[0])
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    (data / "cifar10").mkdir()
    (data / "cifar10" / "cifar-10-python.tar.gz").write_bytes(buf.getvalue())
    res = Resource("cifar-10-python.tar.gz", md5=hashlib.md5(buf.getvalue()).hexdigest())
    monkeypatch.setattr(cifar_mod, "PICKLE_ARCHIVE", res)
    train = cifar_mod.load_cifar10("train")
    test = cifar_mod.load_cifar10("test")
    assert train.images.shape == (15, 3, 32, 32) and len(test) == 3
    assert train.name == "CIFAR-10" and train.classes[9] == "truck"


def test_cifar_jpeg_copy_decodes_into_the_writable_cache_not_the_data_root(dirs, monkeypatch):
    from PIL import Image

    data, cache, _ = dirs
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for cls, num in [("truck", "0001"), ("airplane", "0000"), ("truck", "0000")]:
            jb = io.BytesIO()
            Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(jb, "JPEG", quality=75)
            info = tarfile.TarInfo(f"train/{cls}/{num}.jpg")
            info.size = len(jb.getvalue())
            tf.addfile(info, io.BytesIO(jb.getvalue()))
    (data / "cifar10_jpg").mkdir()
    (data / "cifar10_jpg" / "cifar10-jpg-q75.tar.gz").write_bytes(buf.getvalue())
    before = sorted(p.name for p in (data / "cifar10_jpg").iterdir())
    res = Resource("cifar10-jpg-q75.tar.gz", sha256=hashlib.sha256(buf.getvalue()).hexdigest())
    monkeypatch.setattr(cifar_mod, "JPEG_ARCHIVE", res)
    s = cifar_mod.load_cifar10("train", source="jpeg")
    assert s.name == "CIFAR-10 (JPEG copy)"
    assert s.labels.tolist() == [0, 9, 9]  # ordered by class, then file number
    assert abs(s.images.float().mean().item() - 100) < 3
    assert sorted(p.name for p in (data / "cifar10_jpg").iterdir()) == before
    assert list((cache / "cifar10_jpg").glob("train_jpgdecoded_*.npz"))
    again = cifar_mod.load_cifar10("train", source="jpeg")  # from the decoded cache
    assert torch.equal(again.images, s.images)


# ---------------------------------------------------------------- download → verify → cache
def _served(tmp_path: Path, name: str, content: bytes) -> str:
    srv = tmp_path / "server"
    srv.mkdir(exist_ok=True)
    (srv / name).write_bytes(content)
    return (srv / name).as_uri()


def test_fetch_downloads_verifies_and_caches(dirs):
    data, cache, tmp = dirs
    content = gzip.compress(b"hello world" * 100)
    url = _served(tmp, "f.gz", content)
    res = Resource("f.gz", urls=(url,), md5=hashlib.md5(b"hello world" * 100).hexdigest(),
                   checksum_of="gunzipped")
    path = fetch(res, "toy")
    assert path == cache / "toy" / "f.gz" and path.read_bytes() == content
    assert not list((cache / "toy").glob("*.part"))
    (tmp / "server" / "f.gz").unlink()  # second call needs no network
    assert fetch(res, "toy") == path


def test_corrupt_or_partial_file_is_reported_by_name_and_fetched_again(dirs):
    data, cache, tmp = dirs
    payload = b"0123456789" * 1000
    content = gzip.compress(payload)
    res = Resource("p.gz", urls=(_served(tmp, "p.gz", content),),
                   md5=hashlib.md5(payload).hexdigest(), checksum_of="gunzipped")
    (data / "toy").mkdir()
    (data / "toy" / "p.gz").write_bytes(content[: len(content) // 2])  # partial download
    with pytest.warns(UserWarning, match=r"p\.gz.*corrupt or partial"):
        path = fetch(res, "toy")
    assert path == cache / "toy" / "p.gz" and path.read_bytes() == content
    (cache / "toy" / "p.gz").write_bytes(gzip.compress(b"wrong"))  # corrupt cached copy
    with pytest.warns(UserWarning) as rec:  # both bad copies are reported, by path
        fetch(res, "toy")
    msgs = " ".join(str(w.message) for w in rec)
    assert str(data / "toy" / "p.gz") in msgs and str(cache / "toy" / "p.gz") in msgs
    assert (cache / "toy" / "p.gz").read_bytes() == content


def test_downloaded_file_with_wrong_checksum_raises_clear_error(dirs):
    _, cache, tmp = dirs
    res = Resource("bad.bin", urls=(_served(tmp, "bad.bin", b"not it"),), sha256="0" * 64)
    with pytest.raises(ChecksumError, match=r"bad\.bin.*does not verify.*sha256"):
        fetch(res, "toy")
    assert not (cache / "toy" / "bad.bin").exists()
    assert not list((cache / "toy").glob("*.part"))


def test_offline_error_names_every_file_and_the_folder(dirs):
    data, _, tmp = dirs
    missing = (tmp / "nowhere").as_uri()
    res = [Resource(n, urls=(f"{missing}/{n}",), md5="0" * 32) for n in ("a.gz", "b.gz")]
    with pytest.raises(DataUnavailableError) as info:
        fetch_all(res, "mnist")
    msg = str(info.value)
    assert "a.gz" in msg and "b.gz" in msg and str(data / "mnist") in msg
    assert "NEURALODE_DATA" in msg


def test_mnist_offline_error_lists_the_idx_files(dirs, monkeypatch):
    offline = {
        split: tuple(Resource(r.filename, urls=(), md5=r.md5, checksum_of=r.checksum_of) for r in rs)
        for split, rs in mnist_mod.MNIST_FILES.items()
    }
    monkeypatch.setattr(mnist_mod, "MNIST_FILES", offline)
    with pytest.raises(DataUnavailableError, match=r"t10k-images-idx3-ubyte\.gz(.|\n)*t10k-labels"):
        load_mnist("test")


# ---------------------------------------------------------------- the real files
def test_real_mnist_test_split_verifies_and_parses(monkeypatch, tmp_path):
    monkeypatch.setenv("NEURALODE_DATA", str(SHARED))
    monkeypatch.setenv("NEURALODE_CACHE", str(tmp_path / "cache"))
    s = load_mnist("test", download=False)
    assert s.images.shape == (10000, 1, 28, 28) and s.images.dtype == torch.uint8
    assert torch.bincount(s.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_cifar_jpeg_test_split(monkeypatch, tmp_path):
    monkeypatch.setenv("NEURALODE_DATA", str(SHARED))
    monkeypatch.setenv("NEURALODE_CACHE", str(tmp_path / "cache"))
    s = cifar_mod.load_cifar10("test", download=False)
    assert s.name == "CIFAR-10 (JPEG copy)" and s.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(s.labels).tolist() == [1000] * 10


def test_digits_split_is_stratified_and_disjoint():
    tr, te = load_digits("train"), load_digits("test")
    assert len(tr) + len(te) == 1797 and len(te) == 360
    assert tr.images.shape[1:] == (1, 8, 8) and int(tr.images.max()) == 16
    assert torch.bincount(te.labels).min() >= 35
