"""PhysioNet/CinC Challenge 2012: irregularly sampled multivariate ICU time series.

The data set of Rubanova, Chen & Duvenaud, "Latent ODEs for Irregularly-Sampled Time Series"
(NeurIPS 2019), also used by GRU-D and mTAN. Sets a and b hold 4,000 ICU stays each: the first
48 hours, 37 time-varying variables measured at irregular, variable-specific times, five static
descriptors, and outcomes (in-hospital death among them; 554 / 4,000 deaths in set a).

Pipeline (each step is a plain function, so tests can drive any of them on their own data):

1. :func:`load_set` fetches ``set-?.tar.gz`` and ``Outcomes-?.txt`` through
   :mod:`neuralode.data.cache` (download -> SHA-256 verify -> cache, the archives by content so
   that the official packing and a repacked copy both verify; offline, the verified copies
   under ``$NEURALODE_DATA/physionet2012``), parses the 4,000 text records once
   (:func:`parse_record`, :func:`parse_archive`, :func:`parse_outcomes`) and caches the parsed
   ragged arrays as ``.npz`` in the writable per-user cache, keyed by the sources' SHA-256.
2. :func:`split_patients` - a fixed, seeded, patient-disjoint train/validation/test split.
3. :class:`Normaliser` - per-variable min-max (Rubanova et al.) or z-score statistics fitted on
   the training patients' observations only.
4. :func:`to_patients` - one dense ``(T_i, 37)`` value/mask pair per stay, time in hours,
   optionally rounded to a grid (Rubanova et al.'s PhysioNet command: ``--quantization 0.016``, 1 minute;
   their code's default 0.1 h), repeated measurements at one
   (rounded) time averaged.
5. :func:`collate` - a batch: by default each patient on its own observation times, padded to
   the batch's longest patient (``"compact"``); or, as Rubanova et al. batch, every patient on
   the union of the batch's times (``"union"``, ~15x more rows on the 1-minute grid).

Record format (one file per stay)::

    Time,Parameter,Value
    00:00,RecordID,132539
    00:00,Age,54
    ...
    00:07,HR,73

``Time`` is ``HH:MM`` since ICU admission (00:00..48:00). The descriptors RecordID, Age, Gender,
Height, ICUType and the first 00:00 Weight are static (``-1`` = missing, as in the source; NaN =
absent); every later Weight reading is part of the series. This is the layout of the
``physionet2012_set?.npz`` files shipped next to the raw data, which the tests compare against.

Cite: Silva et al., "Predicting In-Hospital Mortality of ICU Patients: The PhysioNet/Computing in
Cardiology Challenge 2012", CinC 2012; Goldberger et al., PhysioNet, Circulation 2000.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "PARAMS",
    "STATIC_NAMES",
    "OUTCOME_NAMES",
    "FILES",
    "PhysioNetFormatError",
    "PhysioNetSet",
    "Record",
    "Split",
    "Normaliser",
    "Patient",
    "Batch",
    "LAYOUTS",
    "parse_record",
    "parse_archive",
    "parse_outcomes",
    "load_set",
    "split_patients",
    "to_patients",
    "collate",
]

#: The 37 time-varying variables, in the order of the value/mask channels.
PARAMS: tuple[str, ...] = (
    "ALP", "ALT", "AST", "Albumin", "BUN", "Bilirubin", "Cholesterol", "Creatinine", "DiasABP",
    "FiO2", "GCS", "Glucose", "HCO3", "HCT", "HR", "K", "Lactate", "MAP", "MechVent", "Mg",
    "NIDiasABP", "NIMAP", "NISysABP", "Na", "PaCO2", "PaO2", "Platelets", "RespRate", "SaO2",
    "SysABP", "Temp", "TroponinI", "TroponinT", "Urine", "WBC", "Weight", "pH",
)  # fmt: skip
STATIC_NAMES: tuple[str, ...] = ("Age", "Gender", "Height", "ICUType", "Weight")
OUTCOME_NAMES: tuple[str, ...] = (
    "SAPS-I", "SOFA", "Length_of_stay", "Survival", "In-hospital_death",
)  # fmt: skip
_PARAM_INDEX = {name: i for i, name in enumerate(PARAMS)}
_STATIC_INDEX = {name: i for i, name in enumerate(STATIC_NAMES)}
_MAX_MINUTES = 48 * 60
_BASE_URL = "https://physionet.org/files/challenge-2012/1.0.0/"

#: Official files: name -> (URL, SHA-256, what the digest is of). The archives are pinned by
#: content (``"tar-members"``: :func:`neuralode.data.cache.tar_members_digest`, a digest over the
#: sorted per-record files), not by their bytes: the copies in ``$NEURALODE_DATA/physionet2012``
#: are repacked (sorted names, fixed mtimes) with the official records unchanged, so a byte digest
#: of either packing would refuse the other. The outcome files are plain text, pinned by bytes.
FILES: dict[str, tuple[str, str, Literal["file", "gunzipped", "tar-members"]]] = {
    "set-a.tar.gz": (
        _BASE_URL + "set-a.tar.gz",
        "6565136eee900c2ac6b4a43af48c9b52800ff9fc4fe84ac1ebb3007c206bb113",
        "tar-members",
    ),
    "set-b.tar.gz": (
        _BASE_URL + "set-b.tar.gz",
        "14cb4a1b9bbba0c24215ae54287a376e1ff0ed8ccc1ea166f90c1eee5cfade1b",
        "tar-members",
    ),
    "Outcomes-a.txt": (
        _BASE_URL + "Outcomes-a.txt",
        "2613ea60ccda29f87571a7d6b09ad130858a8ccd66325bd073365925026883c2",
        "file",
    ),
    "Outcomes-b.txt": (
        _BASE_URL + "Outcomes-b.txt",
        "1305f29734da374a809483229a99f33a9230aa8d4fa74b1a2d6ad788136423d5",
        "file",
    ),
}
_SUBDIR = "physionet2012"
_PARSER_VERSION = 1  # bump when parsing changes, so stale parsed caches are not reused


class PhysioNetFormatError(ValueError):
    """A raw record or outcomes file that does not follow the documented format.

    ``source`` names the file (``archive.tar.gz:set-a/132539.txt`` inside an archive) and
    ``line`` is the 1-based line number, so the offending line can be found and fixed.
    """

    def __init__(self, source: str, line: int, text: str, reason: str):
        self.source, self.line, self.text, self.reason = source, line, text, reason
        super().__init__(f"{source}, line {line}: {reason} (line: {text!r})")


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Record:
    """One parsed stay: static descriptors and the observations of the 37 series."""

    record_id: int
    static: np.ndarray  # float32 (5,), STATIC_NAMES order; NaN = absent, -1 = missing in source
    t_minutes: np.ndarray  # int16 (n,)
    param: np.ndarray  # uint8 (n,), index into PARAMS
    value: np.ndarray  # float32 (n,)
    skipped: int = 0  # malformed lines skipped (errors="skip" only)


def _parse_time(text: str) -> int:
    hh, sep, mm = text.partition(":")
    if not sep or not hh.isdigit() or not mm.isdigit() or len(mm) != 2:
        raise ValueError(f"time {text!r} is not HH:MM")
    minutes = int(hh) * 60 + int(mm)
    if int(mm) >= 60 or minutes > _MAX_MINUTES:
        raise ValueError(f"time {text!r} is outside 00:00..48:00")
    return minutes


def parse_record(lines: Iterable[str], source: str, *, errors: str = "raise") -> Record:
    """Parse one ``<RecordID>.txt`` file given as its lines.

    Args:
        lines: the file's lines (with or without line ends).
        source: the file's name, used in error messages.
        errors: ``"raise"`` (default) raises :class:`PhysioNetFormatError` naming ``source`` and
            the line at the first malformed line; ``"skip"`` skips malformed lines and counts
            them in ``Record.skipped`` (never silently).

    A line is malformed when it does not have three comma-separated fields, its time is not
    ``HH:MM`` within 00:00..48:00, its parameter is unknown, or its value is not a finite
    number. The header must be ``Time,Parameter,Value`` and a ``RecordID`` line must exist.
    """
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
    static = np.full(len(STATIC_NAMES), np.nan, dtype=np.float32)
    times: list[int] = []
    params: list[int] = []
    values: list[float] = []
    record_id: int | None = None
    skipped = 0
    header_seen = False
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not header_seen:
            if line != "Time,Parameter,Value":
                raise PhysioNetFormatError(
                    source, number, line, "expected the header 'Time,Parameter,Value'"
                )
            header_seen = True
            continue
        try:
            fields = line.split(",")
            if len(fields) != 3:
                raise ValueError(f"expected 3 comma-separated fields, found {len(fields)}")
            t_text, name, v_text = fields
            minutes = _parse_time(t_text)
            try:
                value = float(v_text)
            except ValueError:
                raise ValueError(f"value {v_text!r} is not a number") from None
            if not np.isfinite(value):
                raise ValueError(f"value {v_text!r} is not finite")
            if name == "RecordID":
                if record_id is not None:
                    raise ValueError("second RecordID line")
                record_id = int(value)
            elif name in _STATIC_INDEX and minutes == 0 and np.isnan(static[_STATIC_INDEX[name]]):
                static[_STATIC_INDEX[name]] = value
            elif name in _PARAM_INDEX:
                times.append(minutes)
                params.append(_PARAM_INDEX[name])
                values.append(value)
            elif name in _STATIC_INDEX:
                raise ValueError(f"descriptor {name!r} repeated or given after 00:00")
            else:
                raise ValueError(f"unknown parameter {name!r}")
        except ValueError as exc:
            if errors == "raise":
                raise PhysioNetFormatError(source, number, line, str(exc)) from None
            skipped += 1
    if not header_seen:
        raise PhysioNetFormatError(source, 1, "", "empty file (no 'Time,Parameter,Value' header)")
    if record_id is None:
        raise PhysioNetFormatError(source, number, "", "no RecordID line in the record")
    return Record(
        record_id=record_id,
        static=static,
        t_minutes=np.asarray(times, dtype=np.int16),
        param=np.asarray(params, dtype=np.uint8),
        value=np.asarray(values, dtype=np.float32),
        skipped=skipped,
    )


def parse_archive(path: str | os.PathLike, *, errors: str = "raise") -> dict[str, np.ndarray]:
    """Parse every ``*.txt`` record of a ``set-?.tar.gz`` archive (or a folder of records).

    Returns the ragged layout: ``record_id`` (P,) sorted, ``offsets`` (P+1,), ``t_minutes``,
    ``param``, ``value`` (N,), ``static`` (P, 5), and ``skipped`` (P,) malformed-line counts.
    A file whose name is not its RecordID is an error.
    """
    path = Path(path)
    records: list[Record] = []
    if path.is_dir():
        for file in sorted(path.glob("*.txt")):
            with open(file, encoding="utf-8") as fh:
                records.append(_checked(parse_record(fh, str(file), errors=errors), file.name, str(file)))
    else:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:  # archive order: no backward seeks in the gzip stream
                if not member.isfile() or not member.name.endswith(".txt"):
                    continue
                data = tar.extractfile(member)
                assert data is not None  # isfile() members always have data
                source = f"{path.name}:{member.name}"
                text = io.TextIOWrapper(data, encoding="utf-8")
                records.append(_checked(parse_record(text, source, errors=errors), member.name, source))
    if not records:
        raise ValueError(f"{path}: no *.txt records found")
    records.sort(key=lambda r: r.record_id)
    ids = np.array([r.record_id for r in records], dtype=np.int32)
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate RecordIDs")
    lengths = np.array([len(r.value) for r in records], dtype=np.int64)
    return {
        "record_id": ids,
        "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "t_minutes": np.concatenate([r.t_minutes for r in records]),
        "param": np.concatenate([r.param for r in records]),
        "value": np.concatenate([r.value for r in records]),
        "static": np.stack([r.static for r in records]),
        "skipped": np.array([r.skipped for r in records], dtype=np.int64),
    }


def _checked(record: Record, file_name: str, source: str) -> Record:
    stem = Path(file_name).stem
    if stem.isdigit() and int(stem) != record.record_id:
        raise PhysioNetFormatError(
            source, 2, "", f"RecordID {record.record_id} differs from the file name {file_name!r}"
        )
    return record


def parse_outcomes(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``Outcomes-?.txt``: returns ``(record_id (P,), outcomes (P, 5) int32)``."""
    path = Path(path)
    ids, rows = [], []
    with open(path, encoding="utf-8") as fh:
        for number, raw in enumerate(fh, start=1):
            line = raw.strip()
            if number == 1:
                expected = "RecordID," + ",".join(OUTCOME_NAMES)
                if line != expected:
                    raise PhysioNetFormatError(str(path), 1, line, f"expected the header {expected!r}")
                continue
            fields = line.split(",")
            if len(fields) != 1 + len(OUTCOME_NAMES):
                raise PhysioNetFormatError(str(path), number, line, f"expected {1 + len(OUTCOME_NAMES)} fields")
            try:
                numbers = [int(f) for f in fields]
            except ValueError:
                raise PhysioNetFormatError(str(path), number, line, "fields must be integers") from None
            if numbers[-1] not in (0, 1):
                raise PhysioNetFormatError(str(path), number, line, "In-hospital_death must be 0 or 1")
            ids.append(numbers[0])
            rows.append(numbers[1:])
    order = np.argsort(ids)
    return np.asarray(ids, dtype=np.int32)[order], np.asarray(rows, dtype=np.int32).reshape(-1, 5)[order]


# --------------------------------------------------------------------------- the data set


@dataclass(frozen=True)
class PhysioNetSet:
    """One set (a or b) in ragged layout: patient ``i`` owns observations ``offsets[i]:offsets[i+1]``."""

    name: str
    record_id: np.ndarray
    offsets: np.ndarray
    t_minutes: np.ndarray
    param: np.ndarray
    value: np.ndarray
    static: np.ndarray
    outcomes: np.ndarray

    def __len__(self) -> int:
        return len(self.record_id)

    @property
    def mortality(self) -> np.ndarray:
        """In-hospital death (0/1) per patient."""
        return self.outcomes[:, OUTCOME_NAMES.index("In-hospital_death")]

    def observations(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(t_minutes, param, value)`` of patient ``i``."""
        s = slice(self.offsets[i], self.offsets[i + 1])
        return self.t_minutes[s], self.param[s], self.value[s]

    def subset(self, index: Sequence[int] | np.ndarray) -> PhysioNetSet:
        """The patients ``index`` (in that order) as a new set."""
        index = np.asarray(index, dtype=np.int64)
        parts = [np.arange(self.offsets[i], self.offsets[i + 1]) for i in index]
        take = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        lengths = np.diff(self.offsets)[index]
        return PhysioNetSet(
            name=self.name,
            record_id=self.record_id[index],
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            t_minutes=self.t_minutes[take],
            param=self.param[take],
            value=self.value[take],
            static=self.static[index],
            outcomes=self.outcomes[index],
        )


def _resource(name: str):
    from neuralode.data.cache import Resource

    url, sha256, checksum_of = FILES[name]
    return Resource(name, urls=(url,), sha256=sha256, checksum_of=checksum_of)


def _fetch_files(which: str, root: str | os.PathLike | None) -> tuple[Path, Path]:
    """Verified local paths of ``set-<which>.tar.gz`` and ``Outcomes-<which>.txt``."""
    from neuralode.data import cache

    resources = [_resource(f"set-{which}.tar.gz"), _resource(f"Outcomes-{which}.txt")]
    if root is None:  # $NEURALODE_DATA/physionet2012, the per-user cache, or a download
        archive, outcomes = cache.fetch_all(resources, _SUBDIR)
        return Path(archive), Path(outcomes)
    paths = []
    for res in resources:  # an explicit folder (tests, offline mirrors): verify, never download
        path = Path(root) / res.filename
        reason = cache.verify(path, res)
        if reason is not None:
            raise cache.DataUnavailableError(f"{path}: {reason}")
        paths.append(path)
    return paths[0], paths[1]


def load_set(
    which: str = "a",
    *,
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> PhysioNetSet:
    """Load set ``"a"`` or ``"b"``: fetch + verify the official files, parse once, cache.

    Args:
        which: ``"a"`` or ``"b"``.
        root: a folder that holds ``set-?.tar.gz`` and ``Outcomes-?.txt`` (verified as :data:`FILES` says,
            never downloaded); default: :func:`neuralode.data.cache.fetch_all`
            (``$NEURALODE_DATA/physionet2012`` when set, then the per-user cache, else a
            download from physionet.org into the cache).
        cache_dir: where the parsed ``.npz`` goes (writable); default the per-user cache of
            :mod:`neuralode.data.cache`. Never ``$NEURALODE_DATA``, which may be read-only.
        use_cache: read/write the parsed ``.npz`` cache (False: always parse).
    """
    if which not in ("a", "b"):
        raise ValueError(f"which must be 'a' or 'b', got {which!r}")
    archive, outcomes_path = _fetch_files(which, root)
    key = hashlib.sha256(
        f"{FILES[archive.name][1]}:{FILES[outcomes_path.name][1]}:v{_PARSER_VERSION}".encode()
    ).hexdigest()[:16]
    cached = None
    if use_cache:
        if cache_dir is None:
            from neuralode.data.cache import cache_dir as _user_cache

            cache_dir = _user_cache() / _SUBDIR
        folder = Path(cache_dir)
        cached = folder / f"set-{which}-parsed-{key}.npz"
        if cached.is_file():
            try:
                with np.load(cached) as z:
                    return _assemble(which, {k: z[k] for k in z.files})
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache is rebuilt below
    arrays = parse_archive(archive)
    ids, outcomes = parse_outcomes(outcomes_path)
    if not np.array_equal(ids, arrays["record_id"]):
        raise ValueError(f"{outcomes_path}: its RecordIDs do not match the records of {archive}")
    arrays["outcomes"] = outcomes
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
        payload: dict[str, Any] = dict(arrays)  # (numpy's stub would match an array to allow_pickle)
        with open(tmp, "wb") as fh:
            np.savez(fh, **payload)
        os.replace(tmp, cached)
    return _assemble(which, arrays)


def _assemble(which: str, arrays: dict[str, np.ndarray]) -> PhysioNetSet:
    return PhysioNetSet(
        name=which,
        **{k: arrays[k] for k in ("record_id", "offsets", "t_minutes", "param", "value", "static", "outcomes")},
    )


# --------------------------------------------------------------------------- split, normalise


@dataclass(frozen=True)
class Split:
    """Patient indices (into a :class:`PhysioNetSet`) of the train / validation / test parts."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_patients(
    record_ids: np.ndarray, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> Split:
    """A deterministic, patient-disjoint split.

    The order depends only on the record IDs and ``seed`` (not on the order of ``record_ids``):
    the IDs are sorted, permuted by ``numpy.random.default_rng(seed)``, and cut by ``fractions``.
    """
    parts = tuple(float(f) for f in fractions)
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {parts}")
    ids = np.asarray(record_ids)
    if len(np.unique(ids)) != len(ids):
        raise ValueError("record_ids must be unique")
    by_id = np.argsort(ids, kind="stable")
    perm = by_id[np.random.default_rng(seed).permutation(len(ids))]
    n_train = int(round(parts[0] * len(ids)))
    n_val = int(round(parts[1] * len(ids)))
    return Split(
        train=np.sort(perm[:n_train]),
        val=np.sort(perm[n_train : n_train + n_val]),
        test=np.sort(perm[n_train + n_val :]),
    )


@dataclass(frozen=True)
class Normaliser:
    """Per-variable affine normalisation ``(x - offset) / scale`` (37 channels).

    Fit with :meth:`fit` on the training patients only. ``kind="minmax"`` maps the training
    range to [0, 1]; ``"zscore"`` subtracts the mean, divides by the std; ``"max"`` is what
    Rubanova et al.'s released code computes (``normalize_masked_data``): ``(x - min) / max``,
    the *maximum*, not the range (so a variable whose minimum is far from 0, such as Na,
    98-177, lands in [0, 0.45] rather than [0, 1] and its squared errors shrink accordingly);
    they fit it on every patient of the data set, test patients included.
    ``mean`` is each channel's training mean in normalised units (the "predict the mean"
    baseline, GRU-D's empirical mean).
    """

    kind: str
    offset: np.ndarray
    scale: np.ndarray
    mean: np.ndarray

    @classmethod
    def fit(cls, data: PhysioNetSet, train_index: np.ndarray | None = None, kind: str = "minmax") -> Normaliser:
        if kind not in ("minmax", "zscore", "max"):
            raise ValueError(f"kind must be 'minmax', 'zscore' or 'max', got {kind!r}")
        sub = data if train_index is None else data.subset(train_index)
        n = len(PARAMS)
        offset = np.zeros(n, dtype=np.float64)
        scale = np.ones(n, dtype=np.float64)
        mean = np.zeros(n, dtype=np.float64)
        for c in range(n):
            v = sub.value[sub.param == c].astype(np.float64)
            if v.size == 0:
                continue  # never observed in training: identity, mean 0
            if kind == "minmax":
                offset[c], spread = v.min(), v.max() - v.min()
            elif kind == "max":
                offset[c], spread = v.min(), v.max()
            else:
                offset[c], spread = v.mean(), v.std()
            scale[c] = spread if spread > 0 else 1.0
            mean[c] = ((v - offset[c]) / scale[c]).mean()
        return cls(kind, offset.astype(np.float32), scale.astype(np.float32), mean.astype(np.float32))

    def transform(self, value: np.ndarray, param: np.ndarray) -> np.ndarray:
        return ((value - self.offset[param]) / self.scale[param]).astype(np.float32)

    def inverse(self, value: np.ndarray, param: np.ndarray) -> np.ndarray:
        return (value * self.scale[param] + self.offset[param]).astype(np.float32)


# --------------------------------------------------------------------------- dense + batches


@dataclass(frozen=True)
class Patient:
    """One stay, densified: observation times (hours) and values/mask on those times."""

    record_id: int
    times: np.ndarray  # float32 (T,), hours, strictly increasing
    values: np.ndarray  # float32 (T, 37), normalised, 0 where unobserved
    mask: np.ndarray  # float32 (T, 37), 1 where observed
    label: int  # in-hospital death
    static: np.ndarray  # float32 (5,)


def to_patients(
    data: PhysioNetSet, normaliser: Normaliser, round_hours: float | None = 0.1
) -> list[Patient]:
    """Densify every patient; times in hours, rounded to multiples of ``round_hours`` if given.

    Several readings of one variable at one (rounded) time are averaged (Rubanova et al.).
    """
    if round_hours is not None and not round_hours > 0:
        raise ValueError(f"round_hours must be positive or None, got {round_hours!r}")
    n_ch = len(PARAMS)
    out = []
    labels = data.mortality
    for i in range(len(data)):
        t_min, param, value = data.observations(i)
        hours = t_min.astype(np.float64) / 60.0
        if round_hours is not None:
            hours = np.round(hours / round_hours) * round_hours
        hours = np.round(hours, 6)  # merge float noise of the grid
        times, row = np.unique(hours, return_inverse=True)
        sums = np.zeros((len(times), n_ch), dtype=np.float64)
        counts = np.zeros((len(times), n_ch), dtype=np.float64)
        np.add.at(sums, (row, param), normaliser.transform(value, param))
        np.add.at(counts, (row, param), 1.0)
        mask = counts > 0
        values = np.where(mask, sums / np.maximum(counts, 1), 0.0)
        out.append(
            Patient(
                record_id=int(data.record_id[i]),
                times=times.astype(np.float32),
                values=values.astype(np.float32),
                mask=mask.astype(np.float32),
                label=int(labels[i]),
                static=data.static[i],
            )
        )
    return out


LAYOUTS = ("compact", "union")


@dataclass
class Batch:
    """A batch of patients, in one of two layouts (:func:`collate`).

    - ``"compact"`` (default): each patient on its own observation times, padded to the batch's
      longest patient - ``times`` (B, T) hours, row ``i`` of patient ``b`` at ``times[b, i]``; a
      padding row repeats the patient's last time (0 for a stay without observations) and has
      ``mask`` 0, so that it is a zero gap without input.
    - ``"union"``: every patient on the union of the batch's observation times (Rubanova et
      al.'s batching) - ``times`` (T,); entries a patient lacks have ``mask`` 0.

    ``values``/``mask`` (B, T, C); ``labels`` (B,); ``valid`` (B, T) bool: the row is one of the
    patient's own observation times (compact: its first ``len(p.times)`` rows; union: the rows at
    its times). Models read ``times`` of either shape (:mod:`neuralode.nn.irregular`).
    """

    times: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    record_ids: np.ndarray
    valid: torch.Tensor

    @property
    def layout(self) -> str:
        return "union" if self.times.dim() == 1 else "compact"

    def grid(self) -> torch.Tensor:
        """Every patient's row times, (B, T) in either layout."""
        return self.times.expand(self.values.shape[:2]) if self.times.dim() == 1 else self.times

    def rows(self, b: int) -> np.ndarray:
        """Row indices of patient ``b``'s own observation times, in time order."""
        return np.flatnonzero(self.valid[b].cpu().numpy())

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.times.to(device), self.values.to(device), self.mask.to(device),
            self.labels.to(device), self.record_ids, self.valid.to(device),
        )  # fmt: skip


def collate(patients: Sequence[Patient], layout: str = "compact") -> Batch:
    """Stack patients into a :class:`Batch`: ``"compact"`` - each on its own times, padded to the
    longest (rows ``max_b len(p.times)``); ``"union"`` - on the union of their times.

    At PhysioNet's 1-minute grid a patient has 74 rows on average (at most 202), while the union
    of 50 random patients has about 2,100: compact batching scans ~15x fewer rows.
    """
    import torch

    if not patients:
        raise ValueError("collate needs at least one patient")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    n_ch = patients[0].values.shape[1]
    if layout == "union":
        times = np.unique(np.concatenate([p.times for p in patients])).astype(np.float32)
        T = len(times)
    else:
        T = max(len(p.times) for p in patients)
        times = np.zeros((len(patients), T), dtype=np.float32)
    values = np.zeros((len(patients), T, n_ch), dtype=np.float32)
    mask = np.zeros_like(values)
    valid = np.zeros((len(patients), T), dtype=bool)
    for b, p in enumerate(patients):
        n = len(p.times)
        if layout == "union":
            rows = np.searchsorted(times, p.times)
        else:
            rows = np.arange(n)
            times[b, :n] = p.times
            times[b, n:] = p.times[-1] if n else 0.0  # padding: a zero gap at the last time
        values[b, rows] = p.values
        mask[b, rows] = p.mask
        valid[b, rows] = True
    return Batch(
        times=torch.from_numpy(times),
        values=torch.from_numpy(values),
        mask=torch.from_numpy(mask),
        labels=torch.tensor([p.label for p in patients], dtype=torch.float32),
        record_ids=np.array([p.record_id for p in patients]),
        valid=torch.from_numpy(valid),
    )
