"""Run folders, config overrides, atomic writes, checkpoints and deterministic resume."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
from typing import Literal, Optional

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neuralode.experiments import registry
from neuralode.experiments.base import Run, init_distributed, seed_everything
from neuralode.experiments.config import (
    apply_overrides,
    coerce,
    config_from_dict,
    config_to_dict,
    make_config,
    parse_overrides,
)
from neuralode.io import atomic_torch_save, atomic_write_json, atomic_write_text, read_jsonl

torch.set_num_threads(1)


# ------------------------------------------------------------------------------- config


@dataclasses.dataclass
class Cfg:
    steps: int = 100
    lr: float = 1e-3
    adjoint: bool = True
    method: str = "dopri5"
    hidden: tuple[int, ...] = (32, 32)
    times: list[float] = dataclasses.field(default_factory=lambda: [0.0, 1.0])
    pair: tuple[int, float] = (1, 2.0)
    max_steps: Optional[int] = None
    width: int | None = 4
    mode: Literal["exact", "hutchinson"] = "exact"

    @classmethod
    def quick(cls) -> Cfg:
        return cls(steps=5)


def test_overrides_are_coerced_to_the_field_types():
    values = parse_overrides(Cfg, ["steps=1e3", "lr=0.5", "adjoint=false", "method=rk4", "hidden=8, 16,4",
                                   "times=0,0.5,2", "pair=3,4", "max_steps=20", "width=none", "mode=hutchinson"])
    assert values == {"steps": 1000, "lr": 0.5, "adjoint": False, "method": "rk4", "hidden": (8, 16, 4),
                      "times": [0.0, 0.5, 2.0], "pair": (3, 4.0), "max_steps": 20, "width": None,
                      "mode": "hutchinson"}
    assert type(values["steps"]) is int and type(values["pair"][1]) is float


@given(st.lists(st.integers(-10**12, 10**12), max_size=6),
       st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=6))
@settings(max_examples=50, deadline=None)
def test_comma_separated_values_round_trip(ints, floats):
    assert coerce(",".join(map(str, ints)), tuple[int, ...]) == tuple(ints)
    assert coerce(",".join(map(repr, floats)), list[float]) == floats


@pytest.mark.parametrize("text,expected", [("true", True), ("1", True), ("False", False), ("0", False), ("yes", True)])
def test_bools_accept_true_false_one_zero(text, expected):
    assert coerce(text, bool, "adjoint") is expected


def test_unknown_key_lists_the_valid_keys_and_types():
    with pytest.raises(ValueError, match="unknown config key 'stpes'") as info:
        parse_overrides(Cfg, ["stpes=3"])
    assert "steps: int = 100" in str(info.value) and "hidden: tuple[int, ...]" in str(info.value)


@pytest.mark.parametrize("item,match", [
    ("steps=1.5", "steps='1.5': expected an int"),
    ("lr=fast", "lr='fast': expected a float"),
    ("adjoint=maybe", "expected a bool"),
    ("pair=1", "expected 2 comma-separated values"),
    ("mode=approx", "expected one of 'exact', 'hutchinson'"),
    ("steps", "not of the form key=value"),
])
def test_wrong_values_are_rejected_with_the_key(item, match):
    with pytest.raises(ValueError, match=match):
        parse_overrides(Cfg, [item])


def test_field_descriptions_cope_with_required_fields():
    @dataclasses.dataclass
    class Needs:
        data: str
        n: int = 3

        @classmethod
        def quick(cls):
            return cls("x")

    with pytest.raises(ValueError, match=r"(?s)data: str = \(required\).*n: int = 3"):
        parse_overrides(Needs, ["m=1"])


def test_make_config_uses_quick_and_applies_overrides_and_round_trips_through_json():
    cfg = make_config(Cfg, quick=True, overrides=["lr=0.1"])
    assert (cfg.steps, cfg.lr) == (5, 0.1)
    assert apply_overrides(cfg, {"steps": 7}).steps == 7
    data = json.loads(json.dumps(config_to_dict(cfg)))
    assert config_from_dict(Cfg, data) == cfg


# ------------------------------------------------------------------------------- atomic io


def test_atomic_writes_leave_no_temp_files(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "hello")
    atomic_write_json(tmp_path / "b.json", {"x": torch.tensor(1.5), "y": np.float32(2), "z": float("nan"), "p": (1, 2)})
    atomic_torch_save({"w": torch.ones(3)}, tmp_path / "c.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "c.pt"]
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": 1.5, "y": 2.0, "z": "nan", "p": [1, 2]}


def test_a_failed_write_keeps_the_old_file_whole_and_removes_the_temp(tmp_path, monkeypatch):
    target = tmp_path / "config.json"
    atomic_write_text(target, "old content")

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new content that never fully lands")
    monkeypatch.undo()
    assert target.read_text() == "old content"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    atomic_torch_save({"ok": 1}, tmp_path / "ckpt.pt")
    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_torch_save({"bad": Unpicklable()}, tmp_path / "ckpt.pt")
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True) == {"ok": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "config.json"]


def test_read_jsonl_skips_a_truncated_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"ste')
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]


# ------------------------------------------------------------------------------- Run


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def test_checkpoint_round_trip_loads_with_weights_only(tmp_path):
    seed_everything(0)
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 2)).sum().backward()
    opt.step()
    run = Run(tmp_path, seed=0)
    run.save_checkpoint(run.training_state(3, model, opt, extra_tensor=torch.arange(3)))
    raw = torch.load(run.checkpoint_path, weights_only=True)  # what resume does
    assert raw["step"] == 3 and torch.equal(raw["extra"]["extra_tensor"], torch.arange(3))

    assert Run(tmp_path, resume=False).load_checkpoint() is None  # only when resuming
    model2, resumed = _model(), Run(tmp_path, resume=True)
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.1)
    assert resumed.restore_training(model2, opt2) == 3
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_save_checkpoint_refuses_what_weights_only_cannot_load(tmp_path):
    run = Run(tmp_path)
    with pytest.raises(TypeError, match=r"state\['model'\] holds a .*Sequential"):
        run.save_checkpoint({"model": _model()})
    assert not run.checkpoint_path.exists()


def test_rng_state_restores_python_numpy_and_torch(tmp_path):
    run = Run(tmp_path)
    seed_everything(123)
    random.random(), np.random.rand(), np.random.randn(), torch.rand(1)
    state = run.rng_state()
    path = tmp_path / "rng.pt"
    atomic_torch_save(state, path)
    first = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist())
    run.restore_rng(torch.load(path, weights_only=True))
    again = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist())
    assert first == again


def test_non_zero_ranks_write_nothing_but_can_load_the_checkpoint(tmp_path):
    from neuralode.report.plots import line_plot

    folder = tmp_path / "run"
    worker = Run(folder, config=Cfg(), rank=1, world_size=2)
    worker.start()
    worker.log(1, loss=0.5)
    worker.write_report("# hi")
    assert worker.save_figure(line_plot({"a": [1, 2]}), "loss.png") == "figures/loss.png"
    worker.save_checkpoint({"step": 1})
    worker.write_status("completed")
    assert not folder.exists()

    Run(folder, rank=0, world_size=2).save_checkpoint({"step": 4})
    assert Run(folder, rank=1, world_size=2, resume=True).load_checkpoint() == {"step": 4}


def test_rank_and_world_size_come_from_the_torchrun_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    run = Run(tmp_path / "r")
    assert (run.rank, run.world_size, run.is_main) == (3, 4, False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed("cpu") == torch.device("cpu")  # single process: nothing to join


def test_run_folder_files(tmp_path):
    from neuralode.report.plots import line_plot

    run = Run(tmp_path / "r", experiment="x", config=Cfg(), seed=7, quick=True)
    run.start()
    run.log(1, loss=torch.tensor(0.25), nfe=12)
    rel = run.save_figure(line_plot({"loss": [3, 2, 1]}, logy=True), "loss.png")
    run.write_report(f"# x\n\n![loss]({rel})")
    meta = json.loads((run.dir / "config.json").read_text())
    assert meta["experiment"] == "x" and meta["seed"] == 7 and meta["quick"] is True
    assert meta["config"]["hidden"] == [32, 32] and meta["device"] == "cpu" and meta["torch"] == torch.__version__
    assert "git_commit" in meta and "python" in meta
    [record] = read_jsonl(run.dir / "metrics.jsonl")
    assert record["step"] == 1 and record["loss"] == 0.25 and record["nfe"] == 12
    assert (run.dir / rel).read_bytes()[:4] == b"\x89PNG"
    assert not list(run.dir.rglob(".*.tmp"))


def test_a_fresh_run_clears_a_stale_checkpoint_but_a_resumed_one_keeps_it(tmp_path):
    Run(tmp_path).save_checkpoint({"step": 9})
    Run(tmp_path, resume=True).start()
    assert (tmp_path / "checkpoint.pt").exists()
    Run(tmp_path, resume=False).start()
    assert not (tmp_path / "checkpoint.pt").exists()


def test_sigint_sets_interrupted_and_check_interrupt_saves_then_raises(tmp_path):
    previous = signal.getsignal(signal.SIGINT)
    with Run(tmp_path) as run:
        os.kill(os.getpid(), signal.SIGINT)
        assert run.interrupted
        with pytest.raises(KeyboardInterrupt):
            run.check_interrupt(lambda: {"step": 5})
    assert signal.getsignal(signal.SIGINT) is previous
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True) == {"step": 5}


def test_progress_bar_is_silent_in_ci(tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "1")
    bar = Run(tmp_path).progress(10, "train")
    assert bar.disable
    bar.close()


def test_bad_arguments_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        Run(tmp_path, seed=-1)
    with pytest.raises(ValueError, match="device='tpu' is not"):
        Run(tmp_path, device="tpu")
    with pytest.raises(ValueError, match="figure name"):
        Run(tmp_path).save_figure(None, "../x.png")


# ------------------------------------------------------------------------------- resume


@dataclasses.dataclass
class ToyConfig:
    steps: int = 20
    lr: float = 0.05
    checkpoint_every: int = 5

    @classmethod
    def quick(cls) -> ToyConfig:
        return cls(steps=12)


STOP: dict[str, object] = {}  # {"at": step, "how": "interrupt" | "crash"}: the "kill" hook
FINAL: dict[str, dict[str, torch.Tensor]] = {}


def toy_run(config: ToyConfig, run: Run) -> dict:
    """The documented resume pattern (see base.py) on a tiny regression model."""
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    step = run.restore_training(model, opt)
    state = lambda: run.training_state(step, model, opt)  # noqa: E731
    while step < config.steps:
        if STOP.get("at") == step:
            how = STOP.pop("how")
            STOP.clear()
            if how == "crash":
                raise RuntimeError("killed")
            run.interrupt()
        run.check_interrupt(state)
        x = torch.randn(16, 2)
        noise = np.random.randn() * 0.01 + random.random() * 0.01  # every RNG takes part
        loss = ((model(x) - (x.sum(1, keepdim=True) + noise)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        run.log(step, loss=loss.item())
        if step % config.checkpoint_every == 0:
            run.save_checkpoint(state())
    FINAL[str(run.dir)] = {k: v.clone() for k, v in model.state_dict().items()}
    return {"loss": loss.item()}


@pytest.fixture
def toy():
    registry.register("toy-resume", config=ToyConfig, run=toy_run, description="tiny regression")
    yield "toy-resume"
    registry.unregister("toy-resume")
    STOP.clear()


@pytest.mark.parametrize("how,at", [("interrupt", 7), ("crash", 8)])
def test_a_killed_and_resumed_run_ends_with_the_same_parameters(toy, tmp_path, how, at):
    registry.run_experiment(toy, out=tmp_path / "straight", seed=3)

    STOP.update(at=at, how=how)
    with pytest.raises(KeyboardInterrupt if how == "interrupt" else RuntimeError):
        registry.run_experiment(toy, out=tmp_path / "killed", seed=3)
    saved_step = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["step"]
    assert saved_step == (at if how == "interrupt" else 5)  # crash: back to the last periodic one
    status = json.loads((tmp_path / "killed" / "status.json").read_text())["status"]
    assert status == ("interrupted" if how == "interrupt" else "failed")

    out = registry.run_experiment(toy, out=tmp_path / "killed", seed=3, resume=True)
    straight, resumed = FINAL[str(tmp_path / "straight")], FINAL[str(tmp_path / "killed")]
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    assert json.loads((tmp_path / "killed" / "result.json").read_text()) == out.metrics


def test_resuming_with_another_config_is_refused(toy, tmp_path):
    registry.run_experiment(toy, out=tmp_path / "r", quick=True)
    with pytest.raises(ValueError, match="(?s)cannot resume .*steps: saved 12, now 20"):
        registry.run_experiment(toy, out=tmp_path / "r", resume=True)


def test_registry_validates_and_lists_valid_names(toy):
    assert toy in registry.names()
    with pytest.raises(registry.UnknownExperimentError, match="valid names: .*toy-resume"):
        registry.get("toy-resum")
    with pytest.raises(ValueError, match="experiment name must be lowercase"):
        registry.register("Bad Name", config=ToyConfig, run=toy_run, description="x")
    with pytest.raises(TypeError, match="config must be a dataclass"):
        registry.register("x", config=dict, run=toy_run, description="x")
    def other(config, run):
        return {}

    other.__module__ = "somewhere.else"
    with pytest.raises(ValueError, match="already registered by module"):
        registry.register(toy, config=ToyConfig, run=other, description="same name, other module")


def test_run_must_return_a_dict(tmp_path):
    registry.register("toy-none", config=ToyConfig, run=lambda c, r: None, description="returns nothing")
    try:
        with pytest.raises(TypeError, match="run\\(\\) must return a dict"):
            registry.run_experiment("toy-none", quick=True, out=tmp_path / "n")
        assert json.loads((tmp_path / "n" / "status.json").read_text())["status"] == "failed"
    finally:
        registry.unregister("toy-none")


DDP_SCRIPT = '''
import dataclasses, sys
import torch
import torch.distributed as dist
from neuralode import cli
from neuralode.experiments.base import Run, cleanup_distributed, init_distributed
from neuralode.experiments.registry import register

torch.set_num_threads(1)


@dataclasses.dataclass
class Config:
    steps: int = 3

    @classmethod
    def quick(cls):
        return cls()


def run(config, run: Run):
    run.device = init_distributed(run.device)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(config.steps):
        loss = model(torch.randn(8, 2) + run.rank).pow(2).mean()  # different data per rank
        opt.zero_grad(); loss.backward(); opt.step()
        run.log(step, rank=run.rank)
        run.save_checkpoint({"step": step, "model": model.module.state_dict()})
    w = model.module.weight.detach().clone()
    replicas = [torch.zeros_like(w) for _ in range(run.world_size)]
    dist.all_gather(replicas, w)
    cleanup_distributed()
    return {"world_size": run.world_size, "replicas_equal": all(torch.equal(r, w) for r in replicas)}


register("toy-ddp", config=Config, run=run, description="DDP toy")
sys.exit(cli.main(["run", "toy-ddp", "--out", sys.argv[1]]))
'''


@pytest.mark.slow
def test_torchrun_with_gloo_trains_in_sync_and_only_rank_0_writes(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(tmp_path / "out")],
        capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "result.json").read_text()) == {"world_size": 2, "replicas_equal": True}
    assert {r["rank"] for r in read_jsonl(tmp_path / "out" / "metrics.jsonl")} == {0}
    assert proc.stdout.count("toy-ddp finished") == 1
