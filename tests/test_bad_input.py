"""Bad input at the command line and on disk: clean one-line errors, never a traceback."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuralode import cli
from neuralode.experiments import registry
from neuralode.experiments.base import CheckpointError, Run
from neuralode.experiments.config import field_types, make_config, setting, validate_config

torch.set_num_threads(1)


# ------------------------------------------------------------------------------ config values


def test_every_registered_experiment_validates_its_own_full_and_quick_configs():
    exps = registry.experiments()
    assert not registry.import_errors() and len(exps) >= 10
    for name, exp in exps.items():
        for quick in (False, True):
            validate_config(make_config(exp.config, quick=quick))


@pytest.mark.parametrize("item, error, match", [
    ("iterations=-3", ValueError, r"config field iterations=-3 is not accepted: must be >= 1"),
    ("batch_size=0", ValueError, r"batch_size=0 is not accepted: must be >= 1"),
    ("lr=0", ValueError, r"lr=0.0 is not accepted: must be > 0"),
    ("lr=nan", TypeError, r"lr=nan is not accepted: expected a finite number"),
    ("rtol=inf", TypeError, r"rtol=inf is not accepted: expected a finite number"),
    ("method=dopri9", ValueError, r"method='dopri9' is not accepted: must be a solver method: .*dopri5"),
    ("gradient=backprop", ValueError, r"gradient='backprop' is not accepted: must be a gradient method: direct, "),
    ("hidden=64,-1", ValueError, r"hidden=\(64, -1\) is not accepted: each item must be >= 1"),
])
def test_cnf_2d_refuses_bad_values_naming_field_value_and_what_is_accepted(item, error, match):
    with pytest.raises(error, match=match):
        make_config(registry.get("cnf-2d").config, quick=True, overrides=[item])


def test_the_cli_refuses_the_issue_example_in_one_line_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", "cnf-2d", "--quick", "--set", "iterations=-3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neuralode: error: config field iterations=-3 is not accepted: must be >= 1")
    assert "Traceback" not in err and not out.exists()


@dataclasses.dataclass
class Declared:
    steps: int = setting(10, ge=1, le=100)
    schedule: str = setting("cosine", choices=("cosine", "constant"))
    variants: str = setting("plain,rnode", choices=("plain", "rnode"), comma_list=True)
    warmup_steps: int = 0  # conventions: a count whose default is 0 accepts 0
    eval_every: int = 5
    beta: float = -1.0  # no convention: any finite float
    note: str = "x"

    @classmethod
    def quick(cls) -> Declared:
        return cls(eval_every=0)  # the quick config switches evaluation off: 0 must stay valid

    def validate(self) -> None:
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be <= steps={self.steps}")


@pytest.mark.parametrize("item, match", [
    ("steps=101", r"steps=101 is not accepted: must be >= 1 and <= 100"),
    ("schedule=linear", r"schedule='linear' is not accepted: must be one of 'cosine', 'constant'"),
    ("variants=plain,ffjord", r"must be comma-separated items of 'plain', 'rnode'"),
    ("warmup_steps=-1", r"warmup_steps=-1 is not accepted: must be >= 0"),
    ("eval_every=-2", r"eval_every=-2 is not accepted: must be >= 0"),
    ("warmup_steps=20", r"warmup_steps=20 must be <= steps=10"),
])
def test_declared_settings_conventions_and_the_validate_hook(item, match):
    with pytest.raises(ValueError, match=match):
        make_config(Declared, overrides=[item])
    ok = make_config(Declared, overrides=["variants=rnode", "warmup_steps=0", "eval_every=0", "beta=-3"])
    assert (ok.variants, ok.eval_every, ok.beta) == ("rnode", 0, -3.0)


# A property over every registered experiment: whatever a user types after --set, the CLI
# ends in a clean run (here: the validated config reaches the runner) or a clean error that names
# the field; never a traceback. The runner is stubbed, so no experiment trains.

_TEXT = st.one_of(
    st.sampled_from(["-3", "0", "1", "2", "0.5", "1e-3", "-1e9", "1e12", "nan", "inf", "-inf", "none", "null",
                     "true", "false", "", " ", "1,2", "64,64", "0,0", "-1,5", "1,2,3", "0.8,0.1,0.1", "dopri5",
                     "rk4", "adjoint", "foo", "x,y", "ä", "=", "1_000", "1.5e400"]),
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)


class _Stop(BaseException):  # passes through the CLI's handlers
    pass


@pytest.fixture
def stub_runner(monkeypatch):
    seen = []

    def fake_run(name, **kwargs):
        seen.append(kwargs["config"])
        raise _Stop

    monkeypatch.setattr(registry, "run_experiment", fake_run)
    return seen


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_set_override_of_any_experiment_is_a_clean_run_or_a_clean_error(data, stub_runner, capsys, tmp_path):
    exps = registry.experiments()
    name = data.draw(st.sampled_from(sorted(exps)), label="experiment")
    key = data.draw(st.sampled_from(sorted(field_types(exps[name].config))), label="field")
    text = data.draw(_TEXT, label="value")
    argv = ["run", name, "--quick", "--set", f"{key}={text}", "--out", str(tmp_path / "never")]
    n_seen = len(stub_runner)
    try:
        code = cli.main(argv)
    except _Stop:  # validation passed: the CLI handed a valid config to the runner
        assert len(stub_runner) == n_seen + 1
        validate_config(stub_runner[-1])
        capsys.readouterr()
        return
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("neuralode: error: ") and "Traceback" not in err
    assert key in err


# ------------------------------------------------------------------------------ checkpoints


@dataclasses.dataclass
class Tiny:
    steps: int = 4
    hidden: int = 8

    @classmethod
    def quick(cls) -> Tiny:
        return cls()


def tiny_run(config: Tiny, run: Run) -> dict:
    model = torch.nn.Sequential(torch.nn.Linear(1, config.hidden), torch.nn.Tanh(), torch.nn.Linear(config.hidden, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = run.restore_training(model, opt)
    while step < config.steps:
        x = torch.linspace(-1, 1, 8)[:, None]
        loss = ((model(x) - x**2) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        run.save_checkpoint(run.training_state(step, model, opt))
    return {"loss": loss.item()}


@pytest.fixture
def tiny():
    registry.register("tiny-ckpt", config=Tiny, run=tiny_run, description="checkpoint errors")
    yield
    registry.unregister("tiny-ckpt")


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(bytes(range(256)) * 8)
    elif how == "not a dict":
        torch.save([1, 2, 3], path)
    elif how == "no model":
        torch.save({"step": 2}, path)


@pytest.mark.parametrize("how, match", [
    ("truncated", "the file is truncated or corrupt"),
    ("empty", "the file is truncated or corrupt"),
    ("garbage", "the file is truncated or corrupt"),
    ("not a dict", "it holds a list, not a checkpoint dict"),
    ("no model", "it is not a training checkpoint"),
])
def test_a_damaged_checkpoint_is_one_line_naming_the_file_and_the_way_out_and_is_kept(tiny, tmp_path, capsys,
                                                                                      how, match):
    out = tmp_path / "run"
    assert cli.main(["run", "tiny-ckpt", "--out", str(out)]) == 0
    ckpt = out / "checkpoint.pt"
    _damage(ckpt, how)
    before = ckpt.read_bytes()
    capsys.readouterr()
    assert cli.main(["run", "tiny-ckpt", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[0] == f"run folder: {out}" and len(lines) == 2 and "Traceback" not in err, err
    assert lines[1].startswith(f"neuralode: error: cannot resume from {ckpt}: {match}")
    assert "left untouched" in lines[1] and "without --resume into a new --out folder" in lines[1]
    assert ckpt.read_bytes() == before  # kept as it was


def test_a_checkpoint_of_another_model_is_refused_as_incompatible(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", "tiny-ckpt", "--out", str(out), "--set", "steps=2"]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    # same config on record (so the resume check passes), but the file holds another width
    other = torch.nn.Sequential(torch.nn.Linear(1, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    torch.save({"step": 1, "model": other.state_dict()}, out / "checkpoint.pt")
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert cli.main(["run", "tiny-ckpt", "--out", str(out), "--set", "steps=2", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 2 and "does not fit this model/optimizer" in err and "size mismatch" in err
    assert (out / "checkpoint.pt").read_bytes() == before


def test_an_unreadable_config_record_refuses_the_resume_cleanly(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", "tiny-ckpt", "--out", str(out)]) == 0
    (out / "config.json").write_text('{"experiment": "tiny-ckpt", "conf')
    capsys.readouterr()
    assert cli.main(["run", "tiny-ckpt", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "config.json is unreadable" in err and "Traceback" not in err


def test_load_checkpoint_raises_checkpoint_error_for_python_callers(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: the file is truncated or corrupt \(\d+ bytes"):
        Run(tmp_path, resume=True).load_checkpoint()
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"PK\x03\x04 truncated"
