"""The built wheel and sdist install into a clean virtual environment and work there.

The clean environment sees the test environment's third-party packages (torch is 5 GB: a .pth
file points at them instead of reinstalling), but not this checkout: neuralode itself comes
from the wheel or the sdist alone, installed with ``--no-deps``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SMOKE = """
import sys, torch, neuralode
assert neuralode.__file__.startswith(sys.prefix), neuralode.__file__
t = torch.linspace(0, 1, 5)
ys = neuralode.odeint(lambda t, y: -y, torch.ones(2), t)
assert torch.allclose(ys[-1], torch.exp(torch.tensor(-1.0)).expand(2), atol=1e-6), ys[-1]
print("ok", neuralode.__version__)
"""


def _env() -> dict[str, str]:
    """The environment without PYTHONPATH (the test run points it at this checkout's src/)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _clean_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=False).create(path)
    python = path / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, env=_env()).stdout.strip()
    # third-party packages (torch, numpy, ...) from the test environment, after the venv's own
    (Path(site) / "_test_env_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _pip_install(python: Path, target: Path, *extra: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--quiet", *extra, str(target)], check=True, capture_output=True, text=True, env=_env())


def _smoke(python: Path, cwd: Path) -> None:
    out = subprocess.run([str(python), "-c", SMOKE], cwd=cwd, capture_output=True, text=True, env=_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok ")
    listing = subprocess.run([str(python.parent / "neuralode"), "list"], cwd=cwd, capture_output=True, text=True,
                             env=_env())
    assert listing.returncode == 0, listing.stderr
    assert "cnf-2d" in listing.stdout and "classify-2d" in listing.stdout


@pytest.mark.slow
def test_wheel_and_sdist_build_install_into_a_clean_venv_and_run(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--sdist", "--outdir",
                            str(dist), str(ROOT)], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    version = re.search(r'__version__ = "([^"]+)"', (ROOT / "src/neuralode/__init__.py").read_text()).group(1)
    wheel = dist / f"neuralode-{version}-py3-none-any.whl"
    sdist = dist / f"neuralode-{version}.tar.gz"
    assert wheel.exists() and sdist.exists(), sorted(p.name for p in dist.iterdir())

    names = zipfile.ZipFile(wheel).namelist()
    assert "neuralode/py.typed" in names and "neuralode/experiments/registry.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    members = tarfile.open(sdist).getnames()
    assert f"neuralode-{version}/pyproject.toml" in members and f"neuralode-{version}/src/neuralode/py.typed" in members

    work = tmp_path / "elsewhere"  # not the checkout, so `import neuralode` cannot find src/
    work.mkdir()
    python = _clean_venv(tmp_path / "venv-wheel")
    _pip_install(python, wheel)
    _smoke(python, work)

    python = _clean_venv(tmp_path / "venv-sdist")
    _pip_install(python, sdist, "--no-build-isolation")
    _smoke(python, work)
