"""The .ts parser, the per-series point dropping, the irregular records, and the real files."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from neuralode.data import timeseries as T

TS = """# a comment
@problemName Toy
@univariate false
@dimensions 2
@classLabel true a b
@data
1,2,3:4,5,6:a
0.5,?:1,2:b
"""


def _root() -> Path | None:
    env = os.environ.get("NEURALODE_DATA")
    root = (Path(env) if env else Path(__file__).resolve().parents[2] / "shared/data") / "timeseries"
    return root if (root / "JapaneseVowels_TRAIN.ts").is_file() else None


def test_ts_cases_are_parsed_with_unequal_lengths_missing_values_and_labels():
    s = T.parse_ts(TS.splitlines())
    assert s.classes == ("a", "b") and s.labels.tolist() == [0, 1] and s.n_channels == 2
    np.testing.assert_array_equal(s.values[0], [[1, 4], [2, 5], [3, 6]])
    assert s.values[1].shape == (2, 2) and np.isnan(s.values[1][1, 0])


@pytest.mark.parametrize("bad, reason", [
    ("1,2:1,2:c", "class label 'c'"),
    ("1,2:1:a", "common length"),
    ("1,x:1,2:a", "not a number"),
])
def test_malformed_cases_name_the_line(bad, reason):
    with pytest.raises(T.TSFormatError, match=reason) as err:
        T.parse_ts((TS + bad + "\n").splitlines(), "toy.ts")
    assert err.value.line == 9 and "toy.ts" in str(err.value)


def test_dropping_is_seeded_per_series_and_keeps_the_rest():
    a = T.drop_points([10, 3, 1], 0.5, seed=4)
    b = T.drop_points([10, 3, 1], 0.5, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert [int((~k).sum()) for k in a] == [5, 2, 0]  # round(0.5 T), at least one point kept
    assert not np.array_equal(a[0], T.drop_points([10], 0.5, seed=5)[0])
    with pytest.raises(ValueError, match="frac"):
        T.drop_points([3], 1.0, seed=0)


def test_records_keep_the_original_times_of_the_kept_points():
    s = T.parse_ts(TS.splitlines())
    keeps = [np.array([True, False, True]), np.array([True, True])]
    recs = T.to_patients(s, keeps, mean=np.array([1.0, 0.0]), std=np.array([2.0, 1.0]), time_unit=0.1)
    np.testing.assert_allclose(recs[0].times, [0.0, 0.2])
    np.testing.assert_allclose(recs[0].values, [[0.0, 4.0], [1.0, 6.0]])
    assert recs[1].mask.tolist() == [[1.0, 1.0], [0.0, 1.0]] and recs[1].label == 1  # '?' is unobserved


def test_real_japanese_vowels_verify_and_parse():
    root = _root()
    if root is None:
        pytest.skip("timeseries files not available (set NEURALODE_DATA)")
    train, test = T.load("JapaneseVowels", "TRAIN", root), T.load("JapaneseVowels", "TEST", root)
    assert (len(train), len(test), train.n_channels, len(train.classes)) == (270, 370, 12, 9)
    assert {len(v) for v in train.values} <= set(range(7, 27)) and max(len(v) for v in test.values) == 29
    assert np.bincount(train.labels).tolist() == [30] * 9


def test_real_pickup_gestures_verify_and_parse_with_unequal_lengths():
    root = _root()
    if root is None:
        pytest.skip("timeseries files not available (set NEURALODE_DATA)")
    train, test = T.load("PickupGestureWiimoteZ", "TRAIN", root), T.load("PickupGestureWiimoteZ", "TEST", root)
    assert (len(train), len(test), train.n_channels, len(train.classes)) == (50, 50, 1, 10)
    lengths = [len(v) for v in train.values]
    assert (min(lengths), max(lengths)) == (29, 361) and max(len(v) for v in test.values) == 324
    assert np.bincount(train.labels).tolist() == [5] * 10 == np.bincount(test.labels).tolist()
    assert not any(np.isnan(v).any() for v in train.values)  # unequal lengths, no missing values


def test_a_file_that_fails_verification_is_refused(tmp_path):
    from neuralode.data.cache import DataUnavailableError

    (tmp_path / "JapaneseVowels_TRAIN.ts").write_text(TS)
    with pytest.raises(DataUnavailableError, match="sha256"):
        T.load("JapaneseVowels", "TRAIN", tmp_path)
    with pytest.raises(ValueError, match="name must be one of"):
        T.load("Vowels", "TRAIN", tmp_path)


@pytest.mark.slow
def test_tiny_experiment_trains_every_model_and_reports(tmp_path, monkeypatch):
    root = _root()
    if root is None:
        pytest.skip("timeseries files not available (set NEURALODE_DATA)")
    from neuralode.experiments import irregular_timeseries as E
    from neuralode.experiments.base import Run

    monkeypatch.setenv("NEURALODE_DATA", str(root.parent))
    config = dataclasses.replace(E.Config.quick(), epochs=1, hidden=6, latent=4, rec_hidden=6, units=6,
                                 head_hidden=8)
    with Run(tmp_path / "run", config=config, seed=0) as run:
        run.start()
        m = E.run(config, run)
    for name in E.MODEL_LABELS:
        assert 0.0 <= m[f"{name}/acc_50"] <= 1.0
    assert "test accuracy" in (tmp_path / "run" / "report.md").read_text()
