"""The ``neuralode`` command: a thin layer over :mod:`neuralode.experiments` and :mod:`neuralode.report`.

    neuralode list
    neuralode run NAME [--quick] [--out DIR] [--seed N] [--device cpu|cuda] [--set key=value ...] [--resume]
    neuralode demo [--out DIR] [--only NAME ...] [--all]
    neuralode report DIR
    neuralode bench [--only SCRIPT ...] [-- ARGS]

``main(argv)`` returns the exit code, so the CLI can be driven in-process (tests do).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _err(message: str) -> None:
    print(f"neuralode: error: {message}", file=sys.stderr)


def _setup(args: argparse.Namespace) -> None:
    """Headless plotting, and the thread count if asked for."""
    import matplotlib

    matplotlib.use("Agg")
    threads = getattr(args, "threads", None)
    if threads is not None:
        import torch

        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def _format_metrics(metrics: dict[str, Any]) -> str:
    from neuralode.report.markdown import format_value

    width = max((len(k) for k in metrics), default=0)
    return "\n".join(f"  {k:<{width}}  {format_value(v)}" for k, v in metrics.items())


# ---------------------------------------------------------------------------------- list


def cmd_list(args: argparse.Namespace) -> int:
    from neuralode.experiments import registry

    exps = registry.experiments()
    errors = registry.import_errors()
    if not exps:
        print("no experiments registered")
    else:
        w = max(len(n) for n in exps)
        tw = max(len(e.quick_time) for e in exps.values())
        print(f"{'name':<{w}}  {'--quick':<{tw}}  description")
        for name, exp in exps.items():
            print(f"{name:<{w}}  {exp.quick_time:<{tw}}  {exp.description.splitlines()[0]}")
    if errors:
        print("\nexperiment modules that failed to import:", file=sys.stderr)
        for module, error in errors.items():
            print(f"  {module}: {error}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------- run


def _resume_command(args: argparse.Namespace, run_dir: Path) -> str:
    parts = ["neuralode", "run", args.name, "--out", str(run_dir), "--resume"]
    if args.quick:
        parts.append("--quick")
    if args.seed != 0:
        parts += ["--seed", str(args.seed)]
    if args.device != "cpu":
        parts += ["--device", args.device]
    for item in args.set or []:
        parts += ["--set", item]
    return shlex.join(parts)


def cmd_run(args: argparse.Namespace) -> int:
    from neuralode.experiments import registry
    from neuralode.experiments.base import CheckpointError, dist_info, resolve_device
    from neuralode.experiments.config import make_config

    # Validate everything the user typed before any work starts.
    config: Any
    try:
        exp = registry.get(args.name)
        resolve_device(args.device)
        config = make_config(exp.config, quick=args.quick, overrides=args.set or [])
        if args.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {args.seed}")
    except (ValueError, TypeError) as e:
        _err(str(e))
        return EXIT_USAGE
    run_dir = Path(args.out) if args.out else registry.default_run_dir(args.name, resume=args.resume)
    main_rank = dist_info()[0] == 0  # under torchrun, only rank 0 talks
    if main_rank:
        print(f"run folder: {run_dir}", file=sys.stderr)
    try:
        outcome = registry.run_experiment(args.name, quick=args.quick, out=run_dir, seed=args.seed,
                                          device=args.device, resume=args.resume, config=config)
    except KeyboardInterrupt:
        if not main_rank:
            return EXIT_INTERRUPTED
        saved = (run_dir / "checkpoint.pt").exists()
        print(f"\ninterrupted. {'Checkpoint in ' + str(run_dir) if saved else 'No checkpoint was saved.'}",
              file=sys.stderr)
        if saved:
            print(f"resume with:\n  {_resume_command(args, run_dir)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (registry.ResumeMismatchError, CheckpointError) as e:
        _err(str(e))
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - the traceback is shown, then a one-line summary
        traceback.print_exc(file=sys.stderr)
        if main_rank:
            _err(f"{args.name} failed: {type(e).__name__}: {e}\n  run folder: {run_dir} (status.json records the error)")
        return 1
    if main_rank:
        print(f"\n{args.name} finished in {outcome.wall_time_s:.1f} s; run folder: {outcome.dir}")
        print(_format_metrics(outcome.metrics))
    return 0


# ---------------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from neuralode.experiments import registry
    from neuralode.experiments.base import resolve_device
    from neuralode.report.collect import collect, write_summary

    exps = registry.experiments()
    errors = registry.import_errors()
    try:
        resolve_device(args.device)
    except ValueError as e:
        _err(str(e))
        return EXIT_USAGE
    selected = list(exps) if args.all else [name for name, exp in exps.items() if exp.in_demo]
    if args.only:
        unknown = [n for n in args.only if n not in exps]
        if unknown:
            _err(f"unknown experiment(s) {', '.join(map(repr, unknown))}; valid names: {', '.join(exps) or '(none)'}")
            return EXIT_USAGE
        selected = list(dict.fromkeys(args.only))
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    if not args.only:  # broken modules are failures of the demo too
        for module, import_error in errors.items():
            runs.append({"name": module.rsplit(".", 1)[-1], "status": "failed", "error": f"import failed: {import_error}",
                         "dir": None, "metrics": None, "figures": [], "report": None, "wall_time_s": None})
    interrupted = False
    for i, name in enumerate(selected, start=1):
        run_dir = root / name
        print(f"[{i}/{len(selected)}] {name} (quick, {exps[name].quick_time}) -> {run_dir}", file=sys.stderr)
        t0 = time.time()
        error = None
        try:
            outcome = registry.run_experiment(name, quick=True, out=run_dir, seed=args.seed, device=args.device)
            print(f"    done in {outcome.wall_time_s:.1f} s\n{_format_metrics(outcome.metrics)}", file=sys.stderr)
        except KeyboardInterrupt:
            interrupted, error = True, "interrupted"
        except Exception as e:  # noqa: BLE001 - one failing experiment must not stop the others
            error = f"{type(e).__name__}: {e}"
            print(f"    FAILED: {error}", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
        if run_dir.is_dir():
            info = collect(run_dir)
            if error is not None and info["status"] in ("running", "completed", "missing"):
                info["status"], info["error"] = "failed", error
        else:
            info = {"name": name, "status": "failed", "error": error, "dir": None, "metrics": None,
                    "figures": [], "report": None, "wall_time_s": round(time.time() - t0, 3)}
        runs.append(info)
        if interrupted:
            break
    report = write_summary(root, runs)
    failed = [r["name"] for r in runs if r["status"] != "completed"]
    print(f"\nreport: {report}")
    if interrupted:
        print("demo interrupted; the report covers the experiments run so far", file=sys.stderr)
        return EXIT_INTERRUPTED
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------- report


def cmd_report(args: argparse.Namespace) -> int:
    from neuralode.experiments import registry
    from neuralode.report.collect import collect, find_runs, run_report, write_summary

    root = Path(args.dir)
    if not root.is_dir():
        _err(f"{root} is not a directory")
        return EXIT_USAGE
    registry.discover()  # experiments declare their headlines when their modules load
    runs = find_runs(root)
    if runs:
        path = write_summary(root, [collect(p) for p in runs])
        print(f"report: {path} and {path.with_suffix('.html')} ({len(runs)} runs)")
        return 0
    if (root / "config.json").exists():
        info = collect(root)
        html = run_report(root)
        print(f"{info['name']}: {info['status']}" + (f" ({info['error']})" if info["error"] else ""))
        if info["metrics"]:
            print(_format_metrics(info["metrics"]))
        if info["report"]:
            print(f"report: {info['report']}" + (f" and {html}" if html else ""))
        return 0
    _err(f"{root} holds no run folders (folders with config.json)")
    return EXIT_USAGE


# ---------------------------------------------------------------------------------- bench


def _benchmarks_dir() -> Path | None:
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "benchmarks", Path.cwd() / "benchmarks"):
        if candidate.is_dir():
            return candidate
    return None


def cmd_bench(args: argparse.Namespace) -> int:
    bench_dir = _benchmarks_dir()
    if bench_dir is None:
        _err("neuralode bench needs a source checkout: it runs the scripts in benchmarks/ next to src/ "
             "(not installed with the package). Run it from a clone of the repository.")
        return EXIT_USAGE
    scripts = sorted(p for p in bench_dir.glob("*.py") if not p.name.startswith("_"))
    if args.only:
        by_stem = {p.stem: p for p in scripts}
        unknown = [n for n in args.only if n not in by_stem and n.removesuffix(".py") not in by_stem]
        if unknown:
            _err(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(by_stem) or '(none)'}")
            return EXIT_USAGE
        scripts = [by_stem[n.removesuffix(".py")] for n in args.only]
    if not scripts:
        _err(f"no benchmark scripts (*.py) in {bench_dir}")
        return 1
    extra = [a for a in args.args if a != "--"]
    failed = []
    for script in scripts:
        print(f"== {script.relative_to(bench_dir.parent)} {' '.join(extra)}", flush=True)
        rc = subprocess.call([sys.executable, str(script), *extra], cwd=bench_dir.parent)
        if rc != 0:
            failed.append(f"{script.name} (exit {rc})")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from neuralode import __version__

    parser = argparse.ArgumentParser(prog="neuralode", description="Neural ODE experiments: train, evaluate, report.")
    parser.add_argument("--version", action="version", version=f"neuralode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--seed", type=int, default=0, help="seed for python, numpy and torch (default 0)")
    common.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    common.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")

    p = sub.add_parser("list", help="list the experiments")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", parents=[common], help="run one experiment",
                       description="Run one experiment; writes config.json, metrics.jsonl, result.json, "
                                   "report.md and figures into its run folder.")
    p.add_argument("name", help="experiment name (see `neuralode list`)")
    p.add_argument("--quick", action="store_true", help="the quick configuration (< 2 min on one CPU core)")
    p.add_argument("--out", default=None, help="run folder (default runs/NAME-<timestamp>, or runs/NAME with --resume)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", parents=[common], help="run every experiment's quick config and write one report")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these experiments")
    p.add_argument("--all", action="store_true",
                   help="also run the experiments that need downloaded data or longer runs (mnist, cifar10, ...)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("report", help="rebuild report.md and report.html from run folders (no retraining)")
    p.add_argument("dir", help="a demo folder (holding run folders) or one run folder")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="run the benchmark scripts in benchmarks/ (source checkout only)")
    p.add_argument("--only", nargs="+", metavar="SCRIPT", help="run only these scripts (file stems)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to every script (after --)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``neuralode`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        _setup(args)
    except ValueError as e:
        _err(str(e))
        return EXIT_USAGE
    try:
        return int(args.func(args))
    finally:
        # Under torchrun, leave the process group before the interpreter exits: a live gloo
        # group at exit can abort the process ("terminate called without an active exception").
        from neuralode.experiments.base import cleanup_distributed

        cleanup_distributed()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
