"""The run folder and everything a training loop needs around it.

A :class:`Run` owns one folder::

    config.json     resolved config + experiment, seed, quick flag, device, git commit, versions
    metrics.jsonl   one JSON line per run.log(step, **metrics) call
    result.json     the headline metrics run() returned (written by the runner)
    status.json     running / completed / interrupted / failed, wall time, error
    report.md       run.write_report(markdown)
    figures/*.png   run.save_figure(fig, "name.png")
    checkpoint.pt   run.save_checkpoint(state); loaded with torch.load(weights_only=True)

Every file is written atomically (:mod:`neuralode.io`). Under ``torchrun`` only rank 0 writes;
the other ranks' writes are no-ops, while :meth:`Run.load_checkpoint` works on every rank.

Deterministic resume
--------------------
A run killed midway and resumed ends with exactly the parameters of an uninterrupted run, if the
training loop follows this pattern (the runner has already seeded python, numpy and torch with
``run.seed`` before ``run()`` is called)::

    def run(config: Config, run: Run) -> dict:
        model = make_model(config).to(run.device)          # same init: the seed is fixed
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        step = run.restore_training(model, opt)             # 0 when not resuming
        state = lambda: run.training_state(step, model, opt)
        bar = run.progress(config.steps, "train", initial=step)
        while step < config.steps:
            run.check_interrupt(state)          # Ctrl-C: checkpoint here, then stop
            x, y = sample_batch(config, run.device)   # draw data from the global RNGs per step
            loss = loss_fn(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
            step += 1
            bar.update(); bar.set_postfix(loss=f"{loss.item():.3g}")
            run.log(step, loss=loss.item())
            if step % config.checkpoint_every == 0:
                run.save_checkpoint(state())
        bar.close()
        return {"loss": loss.item()}

What makes it exact: the checkpoint holds model, optimizer, step *and* the RNG states
(:meth:`Run.rng_state`), and is taken at a step boundary. Data must come from the seeded global
RNGs step by step (or from a ``torch.Generator`` whose state goes into the checkpoint via
``extra=``); an epoch iterator that is half consumed cannot be restored. With DDP, checkpoint
``model.module`` rather than the wrapper. On CUDA, bitwise equality also needs deterministic
kernels (``torch.use_deterministic_algorithms``); on CPU it holds as is.

After a resume, ``metrics.jsonl`` holds the steps between the last checkpoint and the kill
twice (the run appends; nothing is rewritten); readers that plot it should keep the later
record of a repeated step.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import io as _io
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuralode.io import (
    append_jsonl,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    to_jsonable,
)

__all__ = [
    "CheckpointError",
    "Run",
    "cleanup_distributed",
    "cleanup",
    "dist_info",
    "git_commit",
    "init_distributed",
    "resolve_device",
    "seed_everything",
]

CHECKPOINT_NAME = "checkpoint.pt"
FIGURE_DIR = "figures"
# Files the runner owns; a fresh (not resumed) run into an existing folder clears them first so
# nothing stale (an old checkpoint!) is mixed with the new run.
_OWNED_FILES = ("config.json", "metrics.jsonl", "result.json", "status.json", "report.md", CHECKPOINT_NAME)




class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: corrupt, truncated or from another model/config.

    The message is one line naming the file, what is wrong, and the ways out; the file itself is
    left as it is (never overwritten or deleted by the failed resume).
    """

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        super().__init__(
            f"cannot resume from {path}: {problem}. The file was left untouched. To start afresh, run "
            f"without --resume into a new --out folder (a fresh run into {path.parent} deletes it); or "
            f"restore a good copy of {path.name} there and resume again")


def _first_line(e: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line (whitespace collapsed), at most ``limit`` characters."""
    text = " ".join(str(e).split())
    line = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return line if len(line) <= limit else line[:limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# environment helpers


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Validate a device request: ``cpu``, ``cuda``, ``cuda:N`` (``None`` means cpu)."""
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a valid torch device; use 'cpu' or 'cuda'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} requested but CUDA is not available "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif dev.type not in ("cpu", "mps"):
        raise ValueError(f"device={device!r} is not supported; use 'cpu' or 'cuda'")
    return dev


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and every CUDA device)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def git_commit(path: str | os.PathLike[str] | None = None) -> str | None:
    """The git commit of the checkout containing ``path`` (default: this package), or None."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` from the environment torchrun sets; ``(0, 1)`` otherwise."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(
            f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} must be integers"
        ) from None
    return rank, world


def init_distributed(device: str | torch.device = "cpu") -> torch.device:
    """Join the torchrun process group when ``WORLD_SIZE > 1``; return this rank's device.

    Backend: nccl for CUDA, gloo for CPU. With CUDA each process is pinned to
    ``cuda:LOCAL_RANK``. Calling it twice, or with ``WORLD_SIZE`` unset/1, is harmless (nothing
    is initialised and ``device`` comes back unchanged).
    """
    import torch.distributed as dist

    dev = torch.device(device)
    _, world = dist_info()
    if dev.type == "cuda" and world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    if world > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return dev


def cleanup_distributed() -> None:
    """Leave the process group if one was initialised (safe to call always)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


cleanup = cleanup_distributed


def _check_weights_only(obj: Any, where: str = "state") -> None:
    """Reject, at save time, what ``torch.load(weights_only=True)`` would refuse at resume."""
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor, torch.dtype,
                                       torch.device, torch.Size, torch.memory_format)):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError(f"checkpoint {where}: key {k!r} of type {type(k).__name__} is not loadable with weights_only")
            _check_weights_only(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple, set)):
        for i, v in enumerate(obj):
            _check_weights_only(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"checkpoint {where} holds a {type(obj).__module__}.{type(obj).__name__}, which "
        "torch.load(weights_only=True) cannot load; store tensors, numbers, strings, lists and "
        "dicts only (e.g. model.state_dict(), run.rng_state())"
    )


# --------------------------------------------------------------------------------------------
# the run


class Run:
    """One run folder plus device, seed, logging, figures, checkpoints and interrupt handling.

    Args:
        dir: the run folder (created by rank 0).
        experiment: experiment name, recorded in config.json.
        config: the resolved config dataclass instance.
        seed: seed for python/numpy/torch; applied by :meth:`start`.
        quick: whether this is the quick configuration.
        device: ``"cpu"``, ``"cuda"`` or a ``torch.device``; checked by :func:`resolve_device`.
        resume: load_checkpoint() returns the last checkpoint only when True.
        rank, world_size: default from ``RANK`` / ``WORLD_SIZE`` (torchrun).

    Use as a context manager (the runner does): entering installs the Ctrl-C handler, exiting
    restores the previous one.
    """

    def __init__(
        self,
        dir: str | os.PathLike[str],
        *,
        experiment: str = "",
        config: Any = None,
        seed: int = 0,
        quick: bool = False,
        device: str | torch.device | None = "cpu",
        resume: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        env_rank, env_world = dist_info()
        self.dir = Path(dir)
        self.experiment = experiment
        self.config = config
        self.seed = seed
        self.quick = bool(quick)
        self.device = resolve_device(device)
        self.resume = bool(resume)
        self.rank = env_rank if rank is None else rank
        self.world_size = env_world if world_size is None else world_size
        self.interrupted = False
        self.last_checkpoint: dict[str, Any] | None = None
        self._t0 = time.time()
        self._previous_handler: Any = None
        self._handler_installed = False

    # -- basics -------------------------------------------------------------------------------

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files."""
        return self.rank == 0

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / CHECKPOINT_NAME

    def __repr__(self) -> str:
        return (f"Run({str(self.dir)!r}, experiment={self.experiment!r}, seed={self.seed}, "
                f"quick={self.quick}, device={str(self.device)!r}, resume={self.resume}, "
                f"rank={self.rank}/{self.world_size})")

    def start(self) -> None:
        """Prepare the folder, write config.json and seed every RNG with ``self.seed``.

        A fresh run into an existing folder removes the files a previous run left there
        (metrics, result, checkpoint, figures); a resumed run keeps them and appends.
        """
        if self.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            if not self.resume:
                for name in _OWNED_FILES:
                    (self.dir / name).unlink(missing_ok=True)
                shutil.rmtree(self.dir / FIGURE_DIR, ignore_errors=True)
            atomic_write_json(self.dir / "config.json", self.metadata())
            self.write_status("running")
        seed_everything(self.seed)

    def metadata(self) -> dict[str, Any]:
        """What config.json records: the resolved config and the environment that ran it."""
        from neuralode.experiments.config import config_to_dict

        cfg = config_to_dict(self.config) if dataclasses.is_dataclass(self.config) else to_jsonable(self.config)
        return {
            "experiment": self.experiment,
            "config": cfg,
            "seed": self.seed,
            "quick": self.quick,
            "device": str(self.device),
            "resume": self.resume,
            "world_size": self.world_size,
            "git_commit": git_commit(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "platform": platform.platform(),
            "argv": sys.argv,
            "started_at": _dt.datetime.now().isoformat(timespec="seconds"),
        }

    @property
    def elapsed(self) -> float:
        """Seconds since this Run object was created."""
        return time.time() - self._t0

    # -- writing -------------------------------------------------------------------------------

    def log(self, step: int, **metrics: Any) -> None:
        """Append ``{"step": step, "time": elapsed, **metrics}`` to metrics.jsonl (rank 0 only).

        Tensors and numpy scalars are converted to numbers. Keep it out of the innermost loop if
        a metric needs ``.item()`` (a host sync) and the step is very cheap.
        """
        if not self.is_main:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.dir / "metrics.jsonl", {"step": int(step), "time": round(self.elapsed, 3), **metrics})

    def write_report(self, markdown: str) -> Path:
        """Write report.md (rank 0 only); figures are linked by the paths save_figure returns."""
        path = self.dir / "report.md"
        if self.is_main:
            atomic_write_text(path, markdown if markdown.endswith("\n") else markdown + "\n")
        return path

    def write_status(self, status: str, **extra: Any) -> None:
        """Write status.json: ``running``/``completed``/``interrupted``/``failed`` (rank 0 only)."""
        if self.is_main:
            atomic_write_json(self.dir / "status.json",
                              {"status": status, "wall_time_s": round(self.elapsed, 3), **extra})

    def save_figure(self, fig: Any, name: str, *, dpi: int = 120) -> str:
        """Save a matplotlib figure as ``figures/<name>`` and close it; return that relative path.

        The returned path is relative to the run folder, ready for ``report.markdown.image``.
        """
        if not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"figure name must be a relative file name like 'loss.png', got {name!r}")
        rel = Path(FIGURE_DIR) / name
        if not rel.suffix:
            rel = rel.with_suffix(".png")
        try:
            if self.is_main:
                buf = _io.BytesIO()
                fig.savefig(buf, format=rel.suffix[1:], dpi=dpi, bbox_inches="tight")
                atomic_write_bytes(self.dir / rel, buf.getvalue())
        finally:
            if "matplotlib.pyplot" in sys.modules:
                sys.modules["matplotlib.pyplot"].close(fig)
        return rel.as_posix()

    # -- checkpoints ------------------------------------------------------------------------

    def save_checkpoint(self, state: dict[str, Any]) -> Path:
        """Atomically save ``state`` as checkpoint.pt (rank 0 only).

        ``state`` may hold only tensors, numbers, strings, lists and dicts (what
        ``torch.load(weights_only=True)`` accepts); anything else is refused here with a
        ``TypeError`` naming the key, rather than failing later at resume.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        _check_weights_only(state)
        if self.is_main:
            atomic_torch_save(state, self.checkpoint_path)
        return self.checkpoint_path

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint when resuming and one exists (any rank), else None.

        Tensors are loaded onto the CPU; ``load_state_dict`` moves them where they belong.
        A file that cannot be read (truncated by a crash or a full disk, corrupted, not a
        checkpoint, or holding objects ``weights_only`` refuses) raises :class:`CheckpointError`
        naming it, and the file is kept.
        """
        path = self.checkpoint_path
        if not self.resume or not path.exists():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many types here (RuntimeError, EOFError, UnpicklingError, OSError)
            size = path.stat().st_size if path.exists() else 0
            raise CheckpointError(path, f"the file is truncated or corrupt ({size} bytes; {_first_line(e)})") from None
        if not isinstance(state, dict):
            raise CheckpointError(path, f"it holds a {type(state).__name__}, not a checkpoint dict")
        self.last_checkpoint = state
        return state

    def rng_state(self) -> dict[str, Any]:
        """Python, numpy and torch (CPU + CUDA) RNG states, loadable with weights_only."""
        version, internal, gauss = random.getstate()
        np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
        state: dict[str, Any] = {
            "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
            "numpy": {"name": np_name, "keys": torch.from_numpy(np.asarray(np_keys).astype(np.int64)),
                      "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def restore_rng(self, state: Mapping[str, Any]) -> None:
        """Restore the RNG states saved by :meth:`rng_state`."""
        try:
            py = state["python"]
            random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
            npy = state["numpy"]
            np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                                 npy["has_gauss"], npy["gauss"]))
            torch.set_rng_state(state["torch"])
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"state is not an rng_state() dict ({e!r}); keys: {sorted(state)}") from None
        if "cuda" in state and torch.cuda.is_available():
            cuda_states = state["cuda"]
            if len(cuda_states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda_states)

    def training_state(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                       scheduler: Any = None, **extra: Any) -> dict[str, Any]:
        """The standard checkpoint: model, optimizer, scheduler, step, RNGs and ``extra``."""
        state: dict[str, Any] = {"step": int(step), "model": model.state_dict(), "rng": self.rng_state()}
        if optimizer is not None:
            state["optimizer"] = optimizer.state_dict()
        if scheduler is not None:
            state["scheduler"] = scheduler.state_dict()
        if extra:
            state["extra"] = extra
        return state

    def restore_training(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                         scheduler: Any = None) -> int:
        """Load a :meth:`training_state` checkpoint into the objects; return the step (0 if none).

        The RNGs are restored too. Extra entries stay in ``run.last_checkpoint["extra"]``.
        """
        ckpt = self.load_checkpoint()
        if ckpt is None:
            return 0
        path = self.checkpoint_path
        missing = [k for k in ("step", "model") if k not in ckpt]
        if missing:
            raise CheckpointError(path, f"it is not a training checkpoint (no {', '.join(map(repr, missing))} entry; "
                                        f"keys: {sorted(map(str, ckpt))})")
        try:
            step = int(ckpt["step"])
            model.load_state_dict(ckpt["model"])
            if optimizer is not None and "optimizer" in ckpt:
                optimizer.load_state_dict(ckpt["optimizer"])
            if scheduler is not None and "scheduler" in ckpt:
                scheduler.load_state_dict(ckpt["scheduler"])
            if "rng" in ckpt:
                self.restore_rng(ckpt["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(path, "it does not fit this model/optimizer (saved by another config or "
                                        f"version? {_first_line(e)})") from None
        self.info(f"resumed from {path} at step {step}")
        return step

    # -- interrupts and progress ---------------------------------------------------------------

    def interrupt(self) -> None:
        """Ask the training loop to checkpoint and stop at its next :meth:`check_interrupt`."""
        self.interrupted = True

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.interrupted:  # second Ctrl-C: stop right now
            raise KeyboardInterrupt
        self.interrupted = True
        print("\ninterrupt: saving a checkpoint at the end of this step "
              "(Ctrl-C again to stop without saving)", file=sys.stderr, flush=True)

    def check_interrupt(self, save: Callable[[], dict[str, Any]]) -> None:
        """Call once per training step: after Ctrl-C, save ``save()`` as checkpoint and stop.

        Raises ``KeyboardInterrupt`` (which the CLI turns into a "resume with ..." message).
        """
        if self.interrupted:
            self.save_checkpoint(save())
            raise KeyboardInterrupt(f"interrupted; checkpoint saved to {self.checkpoint_path}")

    def progress(self, total: int, desc: str = "", initial: int = 0) -> Any:
        """A tqdm bar; use ``bar.set_postfix(loss=..., nfe=...)``.

        Disabled (silent) when stderr is not a terminal, when ``CI`` is set, and on ranks > 0.
        """
        from tqdm.auto import tqdm

        disable = (not self.is_main or bool(os.environ.get("CI"))
                   or not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()))
        return tqdm(total=total, desc=desc, initial=initial, disable=disable, dynamic_ncols=True)

    def info(self, message: str) -> None:
        """Print a line to stderr on rank 0 without breaking a progress bar."""
        if self.is_main:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stderr)

    def __enter__(self) -> Run:
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
            self._handler_installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handler_installed:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._handler_installed = False
