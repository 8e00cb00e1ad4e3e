"""The neuralode command, driven in-process through neuralode.cli.main."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

import neuralode.experiments as experiments_pkg
from neuralode import cli
from neuralode.experiments import registry
from neuralode.experiments.base import Run
from neuralode.report.markdown import image, metrics_table
from neuralode.report.plots import line_plot

torch.set_num_threads(1)


@dataclasses.dataclass
class Config:
    steps: int = 30
    lr: float = 0.1
    hidden: tuple[int, ...] = (8,)

    @classmethod
    def quick(cls) -> Config:
        return cls(steps=6)


INTERRUPT_AT: dict[str, int] = {}


def toy_run(config: Config, run: Run) -> dict:
    model = torch.nn.Sequential(torch.nn.Linear(1, config.hidden[0]), torch.nn.Tanh(), torch.nn.Linear(config.hidden[0], 1))
    opt = torch.optim.SGD(model.parameters(), lr=config.lr)
    step = run.restore_training(model, opt)
    losses = []
    while step < config.steps:
        if INTERRUPT_AT.get("at") == step:
            INTERRUPT_AT.clear()
            run.interrupt()
        run.check_interrupt(lambda: run.training_state(step, model, opt))
        x = torch.linspace(-1, 1, 16)[:, None]
        loss = ((model(x) - x**2) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        losses.append(loss.item())
        run.log(step, loss=loss.item())
    fig = run.save_figure(line_plot({"train": losses}, xlabel="step", ylabel="loss"), "loss.png")
    run.write_report(f"# toy\n\n{metrics_table([{'loss': losses[-1]}])}\n{image(fig, 'training loss')}")
    return {"loss": losses[-1], "steps": step}


def failing_run(config: Config, run: Run) -> dict:
    raise RuntimeError("diverged at step 3")


@pytest.fixture
def toys():
    registry.register("toy-cli", config=Config, run=toy_run, description="tiny regression for CLI tests",
                      quick_time="~1 s")
    registry.register("toy-fail", config=Config, run=failing_run, description="always fails")
    yield
    registry.unregister("toy-cli")
    registry.unregister("toy-fail")
    INTERRUPT_AT.clear()


def test_list_shows_every_experiment_with_description_and_quick_time(toys, capsys):
    broken = registry.import_errors()  # other experiment modules may be broken: reported, exit 1
    assert cli.main(["list"]) == (1 if broken else 0)
    out = capsys.readouterr().out
    assert "toy-cli" in out and "tiny regression for CLI tests" in out and "~1 s" in out


def test_list_reports_a_module_that_fails_to_import(toys, tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_exp.py").write_text("import does_not_exist_anywhere\n")
    monkeypatch.setattr(experiments_pkg, "__path__", [*experiments_pkg.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_IMPORT_ERRORS", dict(registry._IMPORT_ERRORS))
    registry.discover(force=True)
    assert cli.main(["list"]) == 1
    err = capsys.readouterr().err
    assert "neuralode.experiments.broken_exp" in err and "does_not_exist_anywhere" in err


def test_run_quick_writes_the_run_folder_and_prints_metrics(toys, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", "toy-cli", "--quick", "--out", str(out), "--seed", "2", "--set", "lr=0.05"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "loss" in printed
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"] == {"steps": 6, "lr": 0.05, "hidden": [8]} and meta["quick"] and meta["seed"] == 2
    assert json.loads((out / "result.json").read_text())["steps"] == 6
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6
    assert "figures/loss.png" in (out / "report.md").read_text() and (out / "figures" / "loss.png").exists()
    assert json.loads((out / "status.json").read_text())["status"] == "completed"


def test_run_rejects_unknown_names_keys_and_devices(toys, tmp_path, capsys):
    assert cli.main(["run", "toy-cl", "--out", str(tmp_path / "a")]) == 2
    assert "unknown experiment 'toy-cl'; valid names: " in capsys.readouterr().err
    assert cli.main(["run", "toy-cli", "--set", "hiden=3", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'hiden'" in err and "hidden: tuple[int, ...] = (8,)" in err
    assert cli.main(["run", "toy-cli", "--set", "steps=many", "--out", str(tmp_path / "c")]) == 2
    assert "steps='many': expected an int" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli.main(["run", "toy-cli", "--device", "cuda", "--out", str(tmp_path / "d")]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_interrupted_run_prints_the_resume_command_which_finishes_it(toys, tmp_path, capsys):
    out = tmp_path / "run"
    INTERRUPT_AT["at"] = 3
    assert cli.main(["run", "toy-cli", "--quick", "--out", str(out), "--set", "lr=0.05"]) == 130
    err = capsys.readouterr().err
    assert "resume with:" in err and "--resume" in err and "--set lr=0.05" in err and "--quick" in err
    command = err.split("resume with:\n")[1].split()
    assert command[:2] == ["neuralode", "run"]
    assert cli.main(["run", "toy-cli", "--out", str(out), "--resume"]) == 2  # forgot --quick / --set
    assert "steps: saved 6, now 30" in capsys.readouterr().err
    assert cli.main(command[1:]) == 0
    assert json.loads((out / "result.json").read_text())["steps"] == 6


def test_demo_runs_each_quick_config_and_links_them_in_one_report(toys, tmp_path, capsys):
    root = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(root), "--only", "toy-cli", "toy-fail"]) == 1  # one failed
    report = (root / "report.md").read_text()
    assert "[report](toy-cli/report.md)" in report
    assert "![loss](toy-cli/figures/loss.png)" in report
    assert "| toy-cli | completed |" in report and "| toy-fail | failed |" in report
    assert "diverged at step 3" in report
    assert json.loads((root / "toy-cli" / "config.json").read_text())["quick"] is True

    (root / "report.md").unlink()  # rebuilt from the run folders, without retraining
    assert cli.main(["report", str(root)]) == 0
    rebuilt = (root / "report.md").read_text()
    assert "toy-cli/report.md" in rebuilt and "diverged at step 3" in rebuilt


def test_a_failing_run_exits_1_with_the_error(toys, tmp_path, capsys):
    assert cli.main(["run", "toy-fail", "--out", str(tmp_path / "f")]) == 1
    err = capsys.readouterr().err
    assert "toy-fail failed: RuntimeError: diverged at step 3" in err and "Traceback" in err
    assert json.loads((tmp_path / "f" / "status.json").read_text())["status"] == "failed"


def test_demo_rejects_unknown_names(toys, tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), "--only", "nope"]) == 2
    assert "unknown experiment(s) 'nope'" in capsys.readouterr().err


def test_bench_runs_the_scripts_or_says_it_needs_a_checkout(tmp_path, monkeypatch, capsys):
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "speed.py").write_text("import sys; print('speed ok', sys.argv[1:])\n")
    monkeypatch.setattr(cli, "_benchmarks_dir", lambda: bench)
    assert cli.main(["bench", "--only", "speed", "--", "--quick"]) == 0
    assert cli.main(["bench", "--only", "nope"]) == 2
    monkeypatch.setattr(cli, "_benchmarks_dir", lambda: None)
    assert cli.main(["bench"]) == 2
    assert "needs a source checkout" in capsys.readouterr().err


def test_python_dash_m_neuralode_works():
    proc = subprocess.run([sys.executable, "-m", "neuralode", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "demo" in proc.stdout and "bench" in proc.stdout


def test_default_folders_are_timestamped_and_resume_finds_the_interrupted_one(toys, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    INTERRUPT_AT["at"] = 2
    assert cli.main(["run", "toy-cli", "--quick"]) == 130
    [folder] = (tmp_path / "runs").iterdir()
    assert folder.name.startswith("toy-cli-") and (folder / "checkpoint.pt").exists()
    assert cli.main(["run", "toy-cli", "--quick", "--resume"]) == 0
    assert str(folder.relative_to(tmp_path)) in capsys.readouterr().out
    assert json.loads((folder / "result.json").read_text())["steps"] == 6
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [folder.name]
