"""PhysioNet 2012 data: record parsing, the cached load path, split, normalisation, batching."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import torch
import pytest

from neuralode.data import physionet as P

RECORD = """Time,Parameter,Value
00:00,RecordID,132539
00:00,Age,54
00:00,Gender,0
00:00,Height,-1
00:00,ICUType,4
00:00,Weight,-1
00:07,GCS,15
00:07,HR,73
00:37,HR,77
01:37,Weight,80.5
47:59,pH,7.35
"""


def _write_archive(folder: Path, records: dict[int, str], name: str = "set-a.tar.gz") -> Path:
    path = folder / name
    with tarfile.open(path, "w:gz") as tar:
        for rid, text in sorted(records.items()):
            data = text.encode()
            info = tarfile.TarInfo(f"set-a/{rid}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# --------------------------------------------------------------------------- parsing


def test_record_is_parsed_into_static_descriptors_and_series():
    rec = P.parse_record(RECORD.splitlines(), "132539.txt")
    assert rec.record_id == 132539
    np.testing.assert_array_equal(rec.static, [54, 0, -1, 4, -1])
    names = [P.PARAMS[i] for i in rec.param]
    assert names == ["GCS", "HR", "HR", "Weight", "pH"]  # the later Weight stays in the series
    np.testing.assert_array_equal(rec.t_minutes, [7, 7, 37, 97, 47 * 60 + 59])
    np.testing.assert_allclose(rec.value, [15, 73, 77, 80.5, 7.35], rtol=1e-6)
    assert rec.skipped == 0


@pytest.mark.parametrize(
    "bad_line, reason",
    [
        ("00:07,HR", "expected 3 comma-separated fields"),
        ("00:07,HR,73,1", "expected 3 comma-separated fields"),
        ("7:5,HR,73", "not HH:MM"),
        ("49:00,HR,73", "outside 00:00..48:00"),
        ("00:07,HeartRate,73", "unknown parameter 'HeartRate'"),
        ("00:07,HR,abc", "value 'abc' is not a number"),
        ("00:07,HR,", "is not a number"),
        ("00:07,HR,nan", "not finite"),
        ("", "expected 3 comma-separated fields"),
    ],
)
def test_malformed_line_raises_naming_file_and_line(bad_line, reason):
    lines = RECORD.splitlines()
    lines.insert(8, bad_line)  # becomes line 9 of the file
    with pytest.raises(P.PhysioNetFormatError, match=rf"132539\.txt, line 9: .*{reason}") as info:
        P.parse_record(lines, "132539.txt")
    assert info.value.line == 9 and info.value.source == "132539.txt"


def test_skip_mode_counts_every_dropped_line():
    lines = RECORD.splitlines()
    lines[8:8] = ["00:07,HR", "garbage", "00:08,Nope,1"]
    rec = P.parse_record(lines, "x.txt", errors="skip")
    assert rec.skipped == 3
    assert len(rec.value) == 5  # the well-formed lines are all kept


def test_missing_header_and_missing_record_id_are_errors():
    with pytest.raises(P.PhysioNetFormatError, match="line 1: expected the header"):
        P.parse_record(RECORD.splitlines()[1:], "x.txt")
    no_id = [ln for ln in RECORD.splitlines() if "RecordID" not in ln]
    with pytest.raises(P.PhysioNetFormatError, match="no RecordID"):
        P.parse_record(no_id, "x.txt")
    with pytest.raises(ValueError, match="errors must be"):
        P.parse_record(RECORD.splitlines(), "x.txt", errors="ignore")


def test_archive_errors_name_the_member_and_line(tmp_path):
    bad = RECORD.replace("00:37,HR,77", "00:37,HR,seventy")
    path = _write_archive(tmp_path, {132539: bad})
    with pytest.raises(P.PhysioNetFormatError, match=r"set-a\.tar\.gz:set-a/132539\.txt, line 10"):
        P.parse_archive(path)


def test_archive_rejects_a_file_named_after_another_record(tmp_path):
    path = _write_archive(tmp_path, {111: RECORD})
    with pytest.raises(P.PhysioNetFormatError, match="differs from the file name"):
        P.parse_archive(path)


def test_archive_is_parsed_to_sorted_ragged_arrays(tmp_path):
    second = RECORD.replace("132539", "132540").replace("00:07,GCS,15\n", "")
    path = _write_archive(tmp_path, {132540: second, 132539: RECORD})
    arrays = P.parse_archive(path)
    np.testing.assert_array_equal(arrays["record_id"], [132539, 132540])
    np.testing.assert_array_equal(arrays["offsets"], [0, 5, 9])
    np.testing.assert_array_equal(arrays["skipped"], [0, 0])


def test_outcomes_file_is_parsed_and_checked(tmp_path):
    good = tmp_path / "Outcomes-a.txt"
    good.write_text("RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n"
                    "132540,16,8,8,-1,0\n132539,6,1,5,-1,1\n")
    ids, out = P.parse_outcomes(good)
    np.testing.assert_array_equal(ids, [132539, 132540])
    np.testing.assert_array_equal(out[:, 4], [1, 0])
    bad = tmp_path / "bad.txt"
    bad.write_text("RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n132539,6,1,5,-1,2\n")
    with pytest.raises(P.PhysioNetFormatError, match=r"bad\.txt, line 2: In-hospital_death"):
        P.parse_outcomes(bad)


# --------------------------------------------------------------------------- split, normalise, batch


def _toy_set(n: int = 20, seed: int = 0) -> P.PhysioNetSet:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 12, size=n)
    t = np.concatenate([np.sort(rng.integers(0, 2880, size=k)) for k in lengths]).astype(np.int16)
    param = rng.integers(0, 37, size=lengths.sum()).astype(np.uint8)
    value = rng.normal(size=lengths.sum()).astype(np.float32) * 10 + np.arange(n).repeat(lengths)
    outcomes = np.zeros((n, 5), dtype=np.int32)
    outcomes[:, 4] = rng.integers(0, 2, size=n)
    return P.PhysioNetSet(
        name="toy", record_id=np.arange(1000, 1000 + n, dtype=np.int32),
        offsets=np.concatenate([[0], np.cumsum(lengths)]), t_minutes=t, param=param, value=value,
        static=np.zeros((n, 5), np.float32), outcomes=outcomes,
    )  # fmt: skip


def test_split_is_deterministic_patient_disjoint_and_order_free():
    ids = np.arange(5000, 5100)
    a = P.split_patients(ids, (0.8, 0.1, 0.1), seed=3)
    b = P.split_patients(ids, (0.8, 0.1, 0.1), seed=3)
    for x, y in zip((a.train, a.val, a.test), (b.train, b.val, b.test)):
        np.testing.assert_array_equal(x, y)
    assert (len(a.train), len(a.val), len(a.test)) == (80, 10, 10)
    everyone = np.concatenate([a.train, a.val, a.test])
    assert len(np.unique(everyone)) == 100  # disjoint and complete
    shuffled = np.random.default_rng(0).permutation(len(ids))
    c = P.split_patients(ids[shuffled], (0.8, 0.1, 0.1), seed=3)  # same patients, other order
    assert set(ids[shuffled][c.test]) == set(ids[a.test])
    other = P.split_patients(ids, (0.8, 0.1, 0.1), seed=4)
    assert set(other.test) != set(a.test)
    with pytest.raises(ValueError, match="summing to 1"):
        P.split_patients(ids, (0.5, 0.1, 0.1))


def test_normaliser_uses_training_patients_only():
    data = _toy_set(30)
    split = P.split_patients(data.record_id, seed=0)
    norm = P.Normaliser.fit(data, split.train, kind="minmax")
    train = data.subset(split.train)
    for c in range(37):
        v = train.value[train.param == c]
        if v.size > 1 and np.ptp(v) > 0:
            assert norm.offset[c] == pytest.approx(v.min())
            assert norm.scale[c] == pytest.approx(np.ptp(v), rel=1e-5)
    # changing a test patient's values does not change the statistics
    poked = P.PhysioNetSet(**{**data.__dict__, "value": data.value.copy()})
    for i in split.test:
        poked.value[poked.offsets[i] : poked.offsets[i + 1]] += 1e6
    again = P.Normaliser.fit(poked, split.train, kind="minmax")
    np.testing.assert_array_equal(again.offset, norm.offset)
    np.testing.assert_array_equal(again.scale, norm.scale)
    z = P.Normaliser.fit(data, split.train, kind="zscore")
    x = z.transform(train.value, train.param)
    for c in range(37):
        if (train.param == c).sum() > 2:
            assert abs(x[train.param == c].mean()) < 1e-4


def test_patients_average_repeats_on_the_rounded_grid_and_collate_on_own_times_or_the_union():
    data = P.PhysioNetSet(
        name="t", record_id=np.array([1, 2], np.int32), offsets=np.array([0, 3, 4]),
        t_minutes=np.array([0, 2, 62, 30], np.int16), param=np.array([14, 14, 14, 30], np.uint8),
        value=np.array([60.0, 70.0, 80.0, 37.0], np.float32), static=np.zeros((2, 5), np.float32),
        outcomes=np.array([[0, 0, 0, 0, 1], [0, 0, 0, 0, 0]], np.int32),
    )  # fmt: skip
    ident = P.Normaliser("minmax", np.zeros(37, np.float32), np.ones(37, np.float32), np.zeros(37, np.float32))
    p1, p2 = P.to_patients(data, ident, round_hours=0.1)
    np.testing.assert_allclose(p1.times, [0.0, 1.0], atol=1e-6)  # 0 and 2 min fall in one 0.1 h bin
    assert p1.values[0, 14] == pytest.approx(65.0) and p1.mask[0].sum() == 1
    assert p1.label == 1
    raw = P.to_patients(data, ident, round_hours=None)[0]
    assert len(raw.times) == 3
    batch = P.collate([p1, p2], "union")
    np.testing.assert_allclose(batch.times.numpy(), [0.0, 0.5, 1.0], atol=1e-6)
    assert batch.layout == "union" and batch.values.shape == (2, 3, 37)
    assert batch.mask[0, :, 14].tolist() == [1, 0, 1] and batch.mask[1, :, 30].tolist() == [0, 1, 0]
    assert batch.mask.sum() == 3
    assert batch.valid.tolist() == [[True, False, True], [False, True, False]]
    assert batch.rows(0).tolist() == [0, 2] and batch.rows(1).tolist() == [1]
    # compact (the default): each on its own times, the shorter padded by its last time, mask 0
    comp = P.collate([p1, p2])
    assert comp.layout == "compact" and comp.values.shape == (2, 2, 37)
    np.testing.assert_allclose(comp.times.numpy(), [[0.0, 1.0], [0.5, 0.5]], atol=1e-6)
    assert comp.mask[0, :, 14].tolist() == [1, 1] and comp.mask[1, :, 30].tolist() == [1, 0]
    assert comp.mask.sum() == 3 and comp.valid.tolist() == [[True, True], [True, False]]
    for b in range(2):  # the same entries, row for row
        torch.testing.assert_close(comp.values[b, comp.rows(b)], batch.values[b, batch.rows(b)])
        torch.testing.assert_close(comp.grid()[b, comp.rows(b)], batch.grid()[b, batch.rows(b)])
    with pytest.raises(ValueError, match="layout must be one of"):
        P.collate([p1], "ragged")
    with pytest.raises(ValueError, match="round_hours"):
        P.to_patients(data, ident, round_hours=0)


def test_a_stay_without_observations_is_kept_as_an_empty_patient():
    data = P.PhysioNetSet(
        name="t", record_id=np.array([1, 2], np.int32), offsets=np.array([0, 0, 1]),
        t_minutes=np.array([30], np.int16), param=np.array([14], np.uint8), value=np.array([70.0], np.float32),
        static=np.zeros((2, 5), np.float32), outcomes=np.array([[0, 0, 0, 0, 1], [0, 0, 0, 0, 0]], np.int32),
    )  # fmt: skip
    ident = P.Normaliser("minmax", np.zeros(37, np.float32), np.ones(37, np.float32), np.zeros(37, np.float32))
    empty, full = P.to_patients(data, ident)
    assert empty.times.shape == (0,) and empty.values.shape == (0, 37) and empty.label == 1
    for layout in P.LAYOUTS:
        batch = P.collate([empty, full], layout)
        assert batch.values.shape == (2, 1, 37) and batch.mask[0].sum() == 0 and not batch.valid[0].any()
    assert P.collate([empty, full]).times.tolist() == [[0.0], [0.5]]  # an empty stay pads at t = 0


# --------------------------------------------------------------------------- the real files


def _shared() -> Path | None:
    root = os.environ.get("NEURALODE_DATA")
    folder = Path(root) / "physionet2012" if root else Path(__file__).resolve().parents[2] / "shared/data/physionet2012"
    return folder if (folder / "set-a.tar.gz").is_file() else None


@pytest.mark.slow
def test_real_set_a_matches_the_reference_arrays_and_is_cached(tmp_path, monkeypatch):
    folder = _shared()
    if folder is None:
        pytest.skip("PhysioNet 2012 files not available (set NEURALODE_DATA)")
    monkeypatch.setenv("NEURALODE_DATA", str(folder.parent))
    monkeypatch.setenv("NEURALODE_CACHE", str(tmp_path / "cache"))
    data = P.load_set("a")
    assert len(data) == 4000 and int(data.mortality.sum()) == 554
    ref = np.load(folder / "physionet2012_seta.npz")
    for key in ("record_id", "offsets", "t_minutes", "param", "value", "outcomes"):
        np.testing.assert_array_equal(getattr(data, key), ref[key])
    np.testing.assert_array_equal(data.static, ref["static"])
    assert list(ref["param_names"]) == list(P.PARAMS)
    cached = list((tmp_path / "cache" / "physionet2012").glob("set-a-parsed-*.npz"))
    assert len(cached) == 1  # the parsed cache went to the writable cache, not NEURALODE_DATA
    again = P.load_set("a")  # from the cache
    np.testing.assert_array_equal(again.value, data.value)


def test_load_set_refuses_a_file_that_fails_verification(tmp_path):
    (tmp_path / "set-a.tar.gz").write_bytes(b"not the archive")
    (tmp_path / "Outcomes-a.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"set-a\.tar\.gz: unreadable"):
        P.load_set("a", root=tmp_path, cache_dir=tmp_path / "c")
    _write_archive(tmp_path, {132539: RECORD})  # a readable archive of other records
    with pytest.raises(FileNotFoundError, match="sha256 of archive members"):
        P.load_set("a", root=tmp_path, cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="which must be"):
        P.load_set("c")


def test_official_urls_and_checksums_are_pinned():
    for name in ("set-a.tar.gz", "set-b.tar.gz", "Outcomes-a.txt", "Outcomes-b.txt"):
        url, sha, of = P.FILES[name]
        assert url == f"https://physionet.org/files/challenge-2012/1.0.0/{name}"
        assert len(sha) == 64
        assert of == ("tar-members" if name.endswith(".tar.gz") else "file")
    folder = _shared()
    if folder is not None:  # the pinned digests are those of the files themselves
        from neuralode.data.cache import checksum

        readme = (folder / "README.md").read_text()
        for name, (_, sha, of) in P.FILES.items():
            assert checksum(folder / name, "sha256", of) == sha
            if of == "file":  # byte digests are also those listed in the data folder's README
                assert f"| {name} |" in readme and sha in readme


def _pack(path: Path, files: dict[str, bytes], *, mode: str, prefix: str, reverse: bool, mtime: int) -> Path:
    with tarfile.open(path, mode) as tar:
        if prefix:
            folder = tarfile.TarInfo(prefix.rstrip("/"))
            folder.type, folder.mtime = tarfile.DIRTYPE, mtime
            tar.addfile(folder)
        for name in sorted(files, reverse=reverse):
            info = tarfile.TarInfo(prefix + name)
            info.size, info.mtime = len(files[name]), mtime
            tar.addfile(info, io.BytesIO(files[name]))
    return path


def test_archive_digest_is_of_the_records_not_of_their_packing(tmp_path):
    """The official archive and a repacked copy (other order, folder, mtimes, compression) verify
    against one pinned digest; a changed, missing or renamed record does not."""
    from neuralode.data.cache import Resource, tar_members_digest, verify

    files = {f"{rid}.txt": RECORD.replace("132539", str(rid)).encode() for rid in (132539, 132540, 132541)}
    official = _pack(tmp_path / "official.tar.gz", files, mode="w:gz", prefix="set-a/", reverse=False, mtime=1)
    repacked = _pack(tmp_path / "repacked.tar.bz2", files, mode="w:bz2", prefix="", reverse=True, mtime=999)
    assert official.read_bytes() != repacked.read_bytes()
    digest = tar_members_digest(official)
    resource = Resource("set-a.tar.gz", sha256=digest, checksum_of="tar-members")
    assert verify(official, resource) is None and verify(repacked, resource) is None
    changed = dict(files, **{"132540.txt": files["132540.txt"].replace(b"HR,73", b"HR,74")})
    missing = {k: v for k, v in files.items() if k != "132541.txt"}
    renamed = {("132542.txt" if k == "132541.txt" else k): v for k, v in files.items()}
    for i, other in enumerate((changed, missing, renamed)):
        path = _pack(tmp_path / f"other{i}.tar.gz", other, mode="w:gz", prefix="set-a/", reverse=False, mtime=1)
        assert "sha256 of archive members" in verify(path, resource)
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive")
    assert verify(tmp_path / "junk.tar.gz", resource).startswith("unreadable")


@pytest.mark.slow
def test_a_differently_packed_real_archive_downloads_verifies_and_parses(tmp_path, monkeypatch):
    """The download path with the pinned content digest accepts the official records packed another
    way (here: set a repacked in reverse order, other mtimes, under another folder name)."""
    folder = _shared()
    if folder is None:
        pytest.skip("PhysioNet 2012 files not available (set NEURALODE_DATA)")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with tarfile.open(folder / "set-a.tar.gz", "r:gz") as tar:
        files = {m.name.rsplit("/", 1)[-1]: tar.extractfile(m).read() for m in tar if m.isfile()}
    _pack(mirror / "set-a.tar.gz", files, mode="w:gz", prefix="physionet-set-a/", reverse=True, mtime=12345)
    (mirror / "Outcomes-a.txt").write_bytes((folder / "Outcomes-a.txt").read_bytes())
    monkeypatch.setenv("NEURALODE_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("NEURALODE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(P, "FILES", {n: ((mirror / n).as_uri(), sha, of) for n, (_, sha, of) in P.FILES.items()})
    data = P.load_set("a")
    assert len(data) == 4000 and int(data.mortality.sum()) == 554


@pytest.mark.slow
def test_download_verify_cache_path_with_a_local_mirror(tmp_path, monkeypatch):
    """No file in NEURALODE_DATA: the files are 'downloaded' (file:// mirror), verified, cached."""
    folder = _shared()
    if folder is None:
        pytest.skip("PhysioNet 2012 files not available (set NEURALODE_DATA)")
    monkeypatch.setenv("NEURALODE_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("NEURALODE_CACHE", str(tmp_path / "cache"))
    mirrored = {name: ((folder / name).as_uri(), sha, of) for name, (_, sha, of) in P.FILES.items()}
    monkeypatch.setattr(P, "FILES", mirrored)
    data = P.load_set("b")
    assert len(data) == 4000 and int(data.mortality.sum()) == 568
    cached = tmp_path / "cache" / "physionet2012"
    assert (cached / "set-b.tar.gz").is_file() and (cached / "Outcomes-b.txt").is_file()
    assert len(list(cached.glob("set-b-parsed-*.npz"))) == 1
    # a corrupted download in the cache is detected by its checksum and fetched again
    (cached / "Outcomes-b.txt").write_text("corrupt")
    with pytest.warns(UserWarning, match="Outcomes-b.txt"):
        P.load_set("b")
    assert P.parse_outcomes(cached / "Outcomes-b.txt")[1][:, 4].sum() == 568
