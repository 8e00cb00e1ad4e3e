"""Compact batching: every patient on its own times, padded - against union batching and patients alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuralode.data.physionet import Patient, collate
from neuralode.nn import irregular as I

torch.set_num_threads(1)
C = 4


def _patients(first_at_zero: bool = False, n: int = 4, seed: int = 0) -> list[Patient]:
    """``n`` patients with different numbers of rows at different (minute-grid) times; with
    ``first_at_zero`` every one has a row at t = 0 (as the static channels give under their protocol)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        T = int(rng.integers(2, 9))
        times = np.sort(rng.choice(np.arange(1, 48 * 60), T, replace=False)) / 60.0
        if first_at_zero:
            times[0] = 0.0
        mask = (rng.random((T, C)) < 0.5).astype(np.float32)
        mask[np.arange(T), rng.integers(C, size=T)] = 1.0  # every own row has an observation
        values = (rng.standard_normal((T, C)) * mask).astype(np.float32)
        out.append(Patient(100 + k, times.astype(np.float32), values, mask, k % 2, np.zeros(5, np.float32)))
    return out


def _as64(batch):
    return batch.times.double(), batch.values.double(), batch.mask


def _model(name: str, rubanova: bool, **kw):
    torch.manual_seed(0)
    model = I.build_model(name, C, hidden=6, latent=3, rec_hidden=5, units=7, rubanova=rubanova, gru_units=5,
                          field_init_std=0.3, **kw)
    return model.double().eval()


RNNS = [(n, r) for n in ("gru_dt", "gru_decay") for r in (False, True)]


@pytest.mark.parametrize("name, rubanova", RNNS)
def test_rnn_models_predict_the_same_observed_entries_and_final_state_in_both_layouts(name, rubanova):
    """Exact in float64. Their shifted outputs give a grid's first row as its own input: the same row
    in both layouts when every patient has a row at the batch's first time (t = 0, as under their protocol)."""
    patients = _patients(first_at_zero=rubanova)
    model = _model(name, rubanova)
    union, compact = collate(patients, "union"), collate(patients, "compact")
    assert compact.values.shape[1] < union.values.shape[1]
    with torch.no_grad():
        a, b = model(*_as64(union)), model(*_as64(compact))
    torch.testing.assert_close(a.state, b.state, rtol=1e-12, atol=1e-12)
    for k in range(len(patients)):
        ru, rc = union.rows(k), compact.rows(k)
        m = union.mask[k, ru].double()
        torch.testing.assert_close(a.pred[k, ru] * m, b.pred[k, rc] * m, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rubanova", [False, True])
def test_ode_rnn_in_a_compact_batch_equals_each_patient_run_alone(rubanova):
    patients = _patients(first_at_zero=rubanova)
    model = _model("ode_rnn", rubanova, enc_solver=I.SolverConfig("euler", max_step=0.01))
    batch = collate(patients)
    with torch.no_grad():
        out = model(*_as64(batch))
        back = model.scan(*_as64(batch), reverse=True)
        for k, p in enumerate(patients):
            alone = collate([p])
            one = model(*_as64(alone))
            n = len(p.times)
            torch.testing.assert_close(out.pred[k, :n], one.pred[0], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(out.state[k], one.state[0], rtol=1e-12, atol=1e-12)
            one_back = model.scan(*_as64(alone), reverse=True)  # the latent ODE's encoder direction
            torch.testing.assert_close(back.h[k], one_back.h[0], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(back.s[k], one_back.s[0], rtol=1e-12, atol=1e-12)
    assert out.nfe > len(batch.times[0])  # gaps above max_step take several steps


ALL = [(n, r) for n in I.MODEL_NAMES for r in (False, True)]


@pytest.mark.parametrize("name, rubanova", ALL)
def test_padding_rows_change_nothing_for_the_other_patients(name, rubanova):
    """Appending a longer patient pads the others with more rows: their outputs stay the same
    (the latent ODE's decoder solves over the union of the batch's times: equal to its tolerance)."""
    patients = _patients(first_at_zero=rubanova, n=3)
    long = _patients(first_at_zero=rubanova, n=1, seed=5)[0]
    long = Patient(999, np.linspace(0, 47, 30, dtype=np.float32), np.ones((30, C), np.float32),
                   np.ones((30, C), np.float32), 1, np.zeros(5, np.float32))
    model = _model(name, rubanova, dec_solver=I.SolverConfig("dopri5", rtol=1e-10, atol=1e-10))
    small, big = collate(patients), collate(patients + [long])
    assert big.values.shape[1] > small.values.shape[1]
    with torch.no_grad():
        a, b = model(*_as64(small)), model(*_as64(big))
    tol = 1e-7 if name.startswith("latent") else 1e-12
    T = small.values.shape[1]
    m = small.mask.double()
    torch.testing.assert_close(a.pred * m, b.pred[:3, :T] * m, rtol=tol, atol=tol)
    torch.testing.assert_close(a.state, b.state[:3], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.kl, b.kl[:3], rtol=1e-12, atol=1e-12)


def test_per_patient_euler_steps_are_each_patients_own_and_a_zero_gap_changes_nothing():
    torch.manual_seed(0)
    func = I.ODEFunc(3, 8, small_init=False).double()
    h = torch.randn(4, 3, dtype=torch.float64)
    dt = torch.tensor([0.0, 0.03, 0.25, 0.31], dtype=torch.float64)
    solver = I.SolverConfig("euler", max_step=0.1)
    got, nfe = I._evolve_rows(func, h, dt, solver)
    assert nfe == 4  # ceil(0.31 / 0.1): the batch evaluates the field as often as its longest gap needs
    assert torch.equal(got[0], h[0])
    for b in range(1, 4):
        n = max(1, math.ceil(float(dt[b]) / 0.1 - 1e-9))
        ref = h[b:b + 1]
        for _ in range(n):  # n_b equal steps of dt_b / n_b
            ref = ref + (dt[b] / n) * func(0, ref)
        torch.testing.assert_close(got[b:b + 1], ref, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_other_methods_carry_each_patient_over_its_own_gap(method):
    """One solve of the field rescaled to each patient's gap: a fixed-step method takes ceil(max gap /
    max_step) steps of gap_b / n each; an adaptive one matches each patient's own solve to its tolerance."""
    import neuralode

    torch.manual_seed(0)
    func = I.ODEFunc(3, 8, small_init=False).double()
    h = torch.randn(3, 3, dtype=torch.float64)
    dt = torch.tensor([0.0, 0.05, 0.3], dtype=torch.float64)
    solver = I.SolverConfig(method, max_step=0.1, rtol=1e-10, atol=1e-12)
    got, nfe = I._evolve_rows(func, h, dt, solver)
    assert torch.equal(got[0], h[0])
    if method == "rk4":
        assert nfe == 12
    for b in (1, 2):
        opts = {"step_size": float(dt[b]) / 3} if method == "rk4" else {}
        ref = neuralode.solve(func, h[b:b + 1], torch.tensor([0.0, float(dt[b])], dtype=torch.float64), method=method,
                              rtol=1e-10, atol=1e-12, options=opts).ys[-1]
        torch.testing.assert_close(got[b:b + 1], ref, rtol=1e-8, atol=1e-9)


def test_latent_decoder_gathers_each_trajectorys_rows_from_one_solve_over_the_union():
    torch.manual_seed(0)
    model = I.LatentODE(C, latent=3, units=6, dec_solver=I.SolverConfig("dopri5", rtol=1e-10, atol=1e-12)).double()
    z0 = torch.randn(3, 3, dtype=torch.float64)
    times = torch.tensor([[0.0, 5.0, 7.5, 7.5], [1.0, 2.0, 30.0, 30.0], [0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    with torch.no_grad():
        pred, nfe = model.decode(z0, times)
        assert pred.shape == (3, 4, C) and nfe > 0
        for b in range(3):
            alone, _ = model.decode(z0[b:b + 1], times[b].unique())
            rows = torch.searchsorted(times[b].unique(), times[b])
            torch.testing.assert_close(pred[b], alone[0, rows], rtol=1e-8, atol=1e-9)
        shared, _ = model.decode(z0, times[0])  # (T,) is every trajectory on the same times
        expanded, _ = model.decode(z0, times[0].expand(3, -1))
    torch.testing.assert_close(shared, expanded, rtol=0, atol=0)
    with pytest.raises(ValueError, match="times must be"):
        model.decode(z0, times[:2])


def test_times_of_the_wrong_shape_are_rejected_naming_both_shapes():
    model = _model("gru_dt", False)
    values, mask = torch.zeros(2, 3, C, dtype=torch.float64), torch.ones(2, 3, C)
    with pytest.raises(ValueError, match=r"times must have shape \(T,\) = \(3,\) or \(B, T\) = \(2, 3\)"):
        model(torch.zeros(2, 4, dtype=torch.float64), values, mask)


def test_experiment_metrics_agree_between_union_and_compact_batches():
    """The evaluation's every metric (their per-patient-and-channel MSEs, held-out and extrapolation
    MSEs, AUC) is the same for the RNN models in both layouts."""
    from neuralode.experiments import physionet as E

    class _Run:
        device = torch.device("cpu")

    patients = _patients(n=6, seed=3)
    for name in ("gru_dt", "gru_decay"):
        full = E._Full(_model(name, False).float(), I.ClassifierHead(6, 5))
        res = {layout: E._evaluate(full, patients, E.Config(layout=layout, eval_batch_size=4, holdout_frac=0.3,
                                                              extrap_hours=24.0), _Run())
               for layout in ("union", "compact")}
        for key in ("mse_rpc", "extrap_mse_rpc", "interp_mse", "extrap_mse", "auc"):
            assert res["compact"][key] == pytest.approx(res["union"][key], rel=1e-5, abs=1e-9), (name, key)
        np.testing.assert_allclose(res["compact"]["probs"], res["union"]["probs"], rtol=1e-5)


def test_ode_rnn_state_starts_moving_at_the_patients_first_observation():
    """Rows before a patient's first observation (a batch-mate's times, held-out rows) leave its state
    at 0 however long the gaps: the state starts at the first observation, not at the grid's start."""
    model = _model("ode_rnn", False)
    times = torch.tensor([0.0, 10.0, 20.0, 30.0], dtype=torch.float64)
    values = torch.randn(2, 4, C, dtype=torch.float64)
    mask = torch.zeros(2, 4, C)
    mask[0, 0, 0] = mask[1, 2, 1] = mask[1, 3, 0] = 1.0  # patient 1 first observed at row 2
    with torch.no_grad():
        sc = model.scan(times, values, mask)
        late = model.scan(times[2:], values[1:, 2:], mask[1:, 2:])
    assert torch.all(sc.before[1, :3] == 0) and torch.all(sc.before[0, 1:] != sc.after[0, 0])
    torch.testing.assert_close(sc.h[1:], late.h, rtol=1e-12, atol=1e-12)
