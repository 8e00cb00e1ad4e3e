"""Headline tables: verdicts beside published values, in report.md and the self-contained report.html."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import pytest
import torch

from neuralode import cli
from neuralode.experiments.base import Run
from neuralode.report import headlines as hl
from neuralode.report.collect import run_report
from neuralode.report.headlines import Headline, declare, headline_table, judge
from neuralode.report.html import markdown_to_html
from neuralode.report.markdown import image
from neuralode.report.plots import line_plot

torch.set_num_threads(1)


@pytest.mark.parametrize("value, spec, status, text", [
    (0.135, Headline("r", "rmse", 0.1346, "lower", tol=0.001), "reproduced", "reproduced"),
    (0.100, Headline("r", "rmse", 0.1346, "lower", tol=0.001), "better", "better"),
    (1.48, Headline("r", "rmse", 0.1346, "lower", rtol=0.1), "short", "short by 1.35"),
    (0.97, Headline("a", "acc", 0.99, "higher", scale=100), "short", "short by 2"),
    (0.995, Headline("a", "acc", 0.99, "at_least"), "met", "met"),
    (0.985, Headline("a", "acc", 0.99, "at_least", scale=100), "missed", "missed by 0.5"),
    (0.2, Headline("g", "gap", 0.05, "at_most"), "missed", "missed by 0.15"),
    (2.0e5, Headline("p", "params", 2.2e5, "match", rtol=0.05), "off", "off by 2e+04"),
    (3.0, Headline("n", "nfe", goal="info"), "measured", "measured"),
    (None, Headline("n", "nfe", 1.0), "missing", "not in this run"),
    (float("nan"), Headline("n", "nll", 1.0, "lower"), "missed", "not finite (nan)"),
])
def test_verdicts_compare_the_measured_value_with_the_target(value, spec, status, text):
    v = judge(value, spec)
    assert (v.status, v.text) == (status, text)


def test_bad_headline_specs_are_refused_with_the_field():
    with pytest.raises(ValueError, match="goal='up'"):
        Headline("k", "label", 1.0, "up")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a target"):
        Headline("k", "label")
    with pytest.raises(ValueError, match="tol must be"):
        Headline("k", "label", 1.0, tol=-1)
    with pytest.raises(ValueError, match="at least one Headline"):
        declare("x")


def test_declared_headlines_replace_the_defaults_and_derived_values_work(monkeypatch):
    monkeypatch.setattr(hl, "_DECLARED", {})
    assert hl.headlines_for("cnf-2d") == hl.DEFAULTS["cnf-2d"]
    declare("cnf-2d", Headline("ratio", "NFE ratio", 1.0, "at_most", value=lambda m: m["a"] / m["b"]))
    table = headline_table([("cnf-2d", {"a": 30.0, "b": 40.0}), ("no-headlines", {"x": 1})])
    assert "| cnf-2d | NFE ratio | 0.75 | ≤ 1 | met |" in table
    assert "no-headlines" not in table
    # an input of a derived value that is absent gives "not in this run", never an exception
    assert "not in this run" in headline_table([("cnf-2d", {"a": 1.0})])


def test_a_summary_can_leave_out_what_the_runs_did_not_measure_and_names_it(monkeypatch):
    monkeypatch.setattr(hl, "_DECLARED", {})
    declare("x", Headline("a", "first", 1.0, "at_most"), Headline("b", "second variant", 1.0, "at_most"))
    runs = [("x", {"a": 0.5})]
    assert "second variant" in headline_table(runs)
    table = headline_table(runs, skip_missing=True)
    assert "| x | first | 0.5 | ≤ 1 | met |" in table and "second variant" not in table
    assert hl.missing_headlines(runs) == ["x: second variant"]


def test_every_default_headline_is_two_to_five_numbers():
    for name, specs in hl.DEFAULTS.items():
        assert 2 <= len(specs) <= 5, name
        assert len({h.key for h in specs}) == len(specs), name


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.tags: set[str] = set()
        self.cells: list[str] = []
        self.links: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "a":
            self.links.append(a.get("href", ""))
        if tag == "td":
            self._in_cell = True
            self.cells.append("")

    def handle_endtag(self, tag):
        if tag == "td":
            self._in_cell = False

    def handle_data(self, data):
        if self._in_cell:
            self.cells[-1] += data


def _parse(path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _fake_run(folder, name, metrics, quick=True):
    run = Run(folder, experiment=name, config={"steps": 3}, quick=quick)
    run.start()
    fig = run.save_figure(line_plot({"loss": [1, 0.5]}), "loss curve.png")
    run.write_report(f"# {name}: a toy\n\nSome text.\n\n{image(fig, 'training loss')}")
    (folder / "result.json").write_text(json.dumps(metrics))
    run.write_status("completed")


def _check_embedded(page: _Page, n_figures: int) -> None:
    assert len(page.imgs) == n_figures
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"
    assert "script" not in page.tags


def test_run_report_opens_with_the_headlines_and_ends_with_every_metric(tmp_path, monkeypatch):
    monkeypatch.setattr(hl, "_DECLARED", {})
    declare("toy-h", Headline("acc", "test accuracy (%)", 0.99, "at_least", scale=100, source="paper"),
            Headline("nfe", "forward NFE", goal="info"))
    _fake_run(tmp_path, "toy-h", {"acc": 0.985, "nfe": 26.0, "other": 1})
    html = run_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    lines = md.splitlines()
    assert lines[0] == "# toy-h: a toy" and "## Headlines" in lines[:6]
    assert md.index("## Headlines") < md.index("Some text.") < md.index("## All metrics")
    assert "| test accuracy (%) | 98.5 | ≥ 99 (paper) | missed by 0.5 |" in md
    assert "| other | 1 |" in md and "Quick configuration" in md
    run_report(tmp_path)  # idempotent: rebuilding replaces the blocks
    assert (tmp_path / "report.md").read_text() == md
    page = _parse(html)
    _check_embedded(page, 1)
    assert "missed by 0.5" in page.cells and "98.5" in page.cells and "26" in page.cells
    assert 'class="verdict v-bad"' in html.read_text()


def test_summary_and_cli_rebuild_both_formats_with_every_headline(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hl, "_DECLARED", {})
    declare("toy-a", Headline("acc", "accuracy", 0.9, "higher", tol=0.01, source="paper"))
    declare("toy-b", Headline("rmse", "rmse", 0.15, "lower", rtol=0.1), Headline("mse", "mse", goal="info"))
    _fake_run(tmp_path / "a", "toy-a", {"acc": 0.95})
    _fake_run(tmp_path / "b", "toy-b", {"rmse": 1.48, "mse": 0.017})
    assert cli.main(["report", str(tmp_path)]) == 0
    assert "report.html" in capsys.readouterr().out
    md = (tmp_path / "report.md").read_text()
    assert md.index("## Headlines") < md.index("## Runs") < md.index("## toy-a")
    for row in ("| toy-a | accuracy | 0.95 | 0.9 ± 0.01 (paper) | better |",
                "| toy-b | rmse | 1.48 | 0.15 ± 0.015 | short by 1.33 |",
                "| toy-b | mse | 0.017 | — | measured |"):
        assert row in md
    page = _parse(tmp_path / "report.html")
    _check_embedded(page, 2)
    for cell in ("better", "short by 1.33", "measured", "0.95", "1.48", "0.017"):
        assert cell in page.cells
    assert "a/report.html" in page.links and "b/report.html" in page.links
    for run in ("a", "b"):
        _check_embedded(_parse(tmp_path / run / "report.html"), 1)


def test_a_missing_figure_is_shown_as_missing_not_dropped(tmp_path):
    page = markdown_to_html("# t\n\n![x](figures/gone.png)\n", base_dir=tmp_path)
    assert "[missing figure: figures/gone.png]" in page and "<img" not in page
