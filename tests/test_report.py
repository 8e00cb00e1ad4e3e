"""Report helpers: markdown tables, images, shared plots, and reports rebuilt from run folders."""

from __future__ import annotations

import json

import pytest
import torch

from neuralode.experiments.base import Run
from neuralode.report import collect, metrics_table, read_metrics, summary_report, write_summary
from neuralode.report.markdown import format_value, image, link
from neuralode.report.plots import figure, heatmap, line_plot, scatter_2d

torch.set_num_threads(1)


def test_metrics_table_unions_columns_and_formats_values():
    table = metrics_table([{"method": "dopri5", "nfe": 120, "err": 1.234567e-7},
                           {"method": "a|b", "acc": 0.98765}])
    lines = table.strip().splitlines()
    assert lines[0] == "| method | nfe | err | acc |"
    assert lines[1] == "|---|---|---|---|"
    assert lines[2] == "| dopri5 | 120 | 1.235e-07 |  |"
    assert lines[3] == "| a\\|b |  |  | 0.9877 |"
    assert metrics_table([{"a": 1, "b": 2}], columns=["b"]).splitlines()[0] == "| b |"
    with pytest.raises(TypeError, match="list of dicts"):
        metrics_table({"a": 1})


def test_values_images_and_links():
    assert format_value(float("nan")) == "nan" and format_value(True) == "True" and format_value(3) == "3"
    assert format_value(123456.0) == "1.235e+05" and format_value(0.5) == "0.5"
    assert image("figures/a b.png", "density") == "![density](figures/a%20b.png)\n\n*density*\n"
    assert link("x/report.md", "report") == "[report](x/report.md)"


def test_plots_build_figures_that_save_through_the_run(tmp_path):
    run = Run(tmp_path)
    fig = line_plot({"rk4": ([1, 2, 4], torch.tensor([1.0, 0.1, 0.01])), "euler": [1, 0.5, 0.25]}, logy=True,
                    xlabel="steps", ylabel="error")
    paths = [run.save_figure(fig, "error.png")]
    pts = torch.randn(50, 2, requires_grad=True)
    paths.append(run.save_figure(scatter_2d(pts, labels=torch.arange(50) % 2, title="moons"), "points"))
    paths.append(run.save_figure(heatmap(torch.rand(8, 8), extent=(-1, 1, -1, 1)), "density.png"))
    fig, axes = figure(1, 2)
    line_plot({"a": [1, 2]}, ax=axes[0])
    paths.append(run.save_figure(fig, "panels.png"))
    assert paths == ["figures/error.png", "figures/points.png", "figures/density.png", "figures/panels.png"]
    assert all((tmp_path / p).read_bytes()[:4] == b"\x89PNG" for p in paths)
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        scatter_2d(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="non-empty dict"):
        line_plot({})


def _make_run(folder, status="completed"):
    run = Run(folder, experiment="toy", config={"steps": 3}, seed=1)
    run.start()
    run.log(1, loss=1.0)
    fig = run.save_figure(line_plot({"loss": [1, 0.5]}), "loss.png")
    run.write_report(f"# toy\n{image(fig)}")
    if status == "completed":
        (folder / "result.json").write_text(json.dumps({"loss": 0.5}))
        run.write_status("completed")
    else:
        run.write_status("failed", error="ValueError: boom")


def test_collect_reads_a_run_folder_without_the_experiment(tmp_path):
    _make_run(tmp_path / "ok")
    with open(tmp_path / "ok" / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # a crash mid-append
    info = collect(tmp_path / "ok")
    assert info["name"] == "toy" and info["status"] == "completed" and info["metrics"] == {"loss": 0.5}
    assert info["figures"] == ["figures/loss.png"] and info["report"] == tmp_path / "ok" / "report.md"
    assert info["config"]["config"] == {"steps": 3}
    assert [r["step"] for r in read_metrics(tmp_path / "ok")] == [1]
    with pytest.raises(ValueError, match="is not a directory"):
        collect(tmp_path / "missing")


def test_summary_report_links_runs_and_shows_failures(tmp_path):
    _make_run(tmp_path / "a")
    _make_run(tmp_path / "b", status="failed")
    path = write_summary(tmp_path, title="demo")
    text = path.read_text()
    assert text.startswith("# demo")
    assert "[report](a/report.md)" in text and "![loss](a/figures/loss.png)" in text
    assert "**FAILED**: `ValueError: boom`" in text
    assert "| toy | completed |" in text and "| toy | failed |" in text
    # a failure with no folder at all (e.g. an import error) is still listed
    text = summary_report([{"name": "broken", "status": "failed", "error": "ImportError: x", "dir": None}], tmp_path)
    assert "| broken | failed |" in text and "ImportError: x" in text
