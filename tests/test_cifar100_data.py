"""CIFAR-100 loader: download -> verify -> cache, with an archive the test writes."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest

from neuralode.data import cifar100
from neuralode.data.cache import ChecksumError, Resource


def _member(tf: tarfile.TarFile, name: str, obj: object) -> None:
    data = pickle.dumps(obj)
    info = tarfile.TarInfo(f"cifar-100-python/{name}")
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _write_archive(path, n_train=6, n_test=4):
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tf:
        for split, n in (("train", n_train), ("test", n_test)):
            _member(tf, split, {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                                b"fine_labels": [i % 100 for i in range(0, 17 * n, 17)],
                                b"coarse_labels": [i % 20 for i in range(n)],
                                b"filenames": [b"x.png"] * n})
        _member(tf, "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                             b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def archive(tmp_path, monkeypatch):
    src = tmp_path / "mirror" / "cifar-100-python.tar.gz"
    src.parent.mkdir()
    md5 = _write_archive(src)
    monkeypatch.setenv("NEURALODE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("NEURALODE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cifar100, "ARCHIVE", Resource("cifar-100-python.tar.gz", urls=(src.as_uri(),), md5=md5))
    return src


def test_the_official_archive_and_its_published_md5():
    assert cifar100.ARCHIVE.urls == ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",)
    assert cifar100.ARCHIVE.md5 == "eb9058c3a382ffc7106e4002c42a8d85"


def test_download_verify_cache_then_load_fine_and_coarse_labels(archive, tmp_path):
    train = cifar100.load_cifar100("train")
    cached = tmp_path / "cache" / "cifar100" / "cifar-100-python.tar.gz"
    assert cached.read_bytes() == archive.read_bytes()
    assert train.images.shape == (6, 3, 32, 32) and len(train.classes) == 100 and train.name == "CIFAR-100"
    assert train.labels.tolist() == [0, 17, 34, 51, 68, 85] and train.classes[17] == "fine17"
    archive.unlink()  # the cached copy serves from now on
    test = cifar100.load_cifar100("test", labels="coarse")
    assert len(test) == 4 and len(test.classes) == 20 and test.labels.tolist() == [0, 1, 2, 3]
    assert test.name == "CIFAR-100 (20 superclasses)"


def test_an_archive_that_fails_its_checksum_is_rejected(archive, monkeypatch):
    monkeypatch.setattr(cifar100, "ARCHIVE", Resource("cifar-100-python.tar.gz", urls=(archive.as_uri(),),
                                                      md5="0" * 32))
    with pytest.raises(ChecksumError, match="does not verify"):
        cifar100.load_cifar100("train")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="split='val'"):
        cifar100.load_cifar100("val")
    with pytest.raises(ValueError, match="labels='medium'"):
        cifar100.load_cifar100("train", labels="medium")


@pytest.mark.slow
def test_cifar100_experiment_shares_the_cifar10_report(archive, tmp_path):
    import json

    from neuralode.experiments.registry import run_experiment

    src = archive.parent / "big.tar.gz"
    md5 = _write_archive(src, n_train=64, n_test=20)
    cifar100.ARCHIVE = Resource("cifar-100-python.tar.gz", urls=(src.as_uri(),), md5=md5)  # undone by monkeypatch
    out = run_experiment("cifar100", quick=True, out=tmp_path / "run", overrides=[
        "variants=odenet,resnet", "max_train=64", "max_test=20", "epochs=1", "batch_size=32"])
    assert out.metrics["dataset"] == "CIFAR-100"
    assert out.metrics["odenet_nfe_forward"] == 8 and out.metrics["resnet_nfe_forward"] == 0
    assert out.metrics["odenet_train_images_per_s"] > 0 and out.metrics["resnet_infer_images_per_s"] > 0
    rows = json.loads((tmp_path / "run" / "per_class.json").read_text())
    assert len(rows) == 100 and rows[17]["class"] == "fine17" and "odenet F1" in rows[0]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "CIFAR-100" in report and "train_images_per_s" in report
