"""What a user installs: the sdist and the wheel carry the CUDA sources and declare torch,
an installed (non-editable) copy finds its own sources for a JIT build, and the test
suite collects from an unpacked sdist.

The sdist is built from a copy of this tree, and the wheel from that sdist (what
`python -m build` does), both without build isolation, so nothing is downloaded.
"""

from __future__ import annotations

import email.parser
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from fused_rnn import _build

ROOT = Path(__file__).resolve().parent.parent
# build outputs and caches a working tree may hold; never part of a distribution
IGNORED = ("__pycache__", "*.pyc", "*.so", "*.o", "*.egg-info", "build", "dist", ".git",
           ".pytest_cache", "gpu_out", ".whl", ".gl", "out", "tmp", "checkpoints", "*.pt")
# what the test suite needs beside the test files themselves
SDIST_NEEDS = ["tests/conftest.py", "tests/helpers.py", "tests/compile_helpers.py",
               "tests/gpu/conftest.py", "tests/gpu/gpu_helpers.py", "tests/gpu/test_smoke_gpu.py",
               "benchmarks/bench.py", "benchmarks/common.py", "benchmarks/rnnbench/cli.py",
               "benchmarks/rnnbench/baselines.py", "examples/char_lm.py",
               "scripts/gpu_check.sh", "scripts/readme_commands.py", "scripts/sanitize_target.cu",
               "scripts/sanitize_build.py", "README.md", "setup.py",
               "pyproject.toml", "MANIFEST.in", ".ci/run"]


TABLE_DEVICE = "Packaging Test GPU"


def _tree_copy(dst: Path) -> Path:
    """This tree's files (tracked and untracked-but-not-ignored when it is a git checkout),
    copied to `dst`."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                               check=True, capture_output=True).stdout.decode().split("\0")
        for name in filter(None, names):
            src = ROOT / name
            if src.is_file():
                (dst / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst / name)
    else:  # an unpacked sdist
        shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(*IGNORED), dirs_exist_ok=True)
    return dst


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """(sdist, wheel): the sdist of a copy of this tree, the wheel built from that sdist."""
    base = tmp_path_factory.mktemp("dist")
    src = _tree_copy(base / "src")
    # a crossover table, as `bench.py --calibrate` writes one: it must ship in the wheel
    table = dict(format=1, device=TABLE_DEVICE, entries=[])
    (src / "fused_rnn" / "crossover").mkdir(exist_ok=True)
    (src / "fused_rnn" / "crossover" / "packaging-test-gpu.json").write_text(json.dumps(table))
    out = base / "out"
    env = dict(os.environ, FUSED_RNN_SKIP_CUDA_BUILD="1")  # the wheel under test is pure Python
    r = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                        str(src)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"python -m build failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    (sdist,), (wheel,) = list(out.glob("*.tar.gz")), list(out.glob("*.whl"))
    return sdist, wheel


def _metadata(text: str):
    return email.parser.Parser().parsestr(text)


def test_sdist_carries_csrc_tests_and_declares_torch(dists):
    sdist, _ = dists
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        top = names[0].split("/")[0]
        members = {n[len(top) + 1:] for n in names if n.startswith(top + "/")}
        pkg_info = _metadata(tar.extractfile(f"{top}/PKG-INFO").read().decode())
    missing = [f for f in _build.csrc_files(str(ROOT)) + SDIST_NEEDS if f not in members]
    assert not missing, f"the sdist lacks {missing}"
    tests = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("*.py")
             if "__pycache__" not in p.parts}
    assert tests <= members, f"the sdist lacks tests {sorted(tests - members)}"
    junk = [m for m in members if "__pycache__" in m or m.endswith((".pyc", ".so", ".o"))]
    assert not junk, junk
    assert "torch>=2.4" in pkg_info.get_all("Requires-Dist")


def test_wheel_carries_csrc_and_declares_torch(dists):
    _, wheel = dists
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = _metadata(zf.read(meta_name).decode())
        for rel in _build.csrc_files(str(ROOT)):
            name = f"fused_rnn/{rel}"
            assert name in names, f"the wheel lacks {name}"
            assert zf.read(name) == (ROOT / rel).read_bytes(), f"{name} differs from {rel}"
    assert not [n for n in names if n.startswith(("csrc/", "tests/", "benchmarks/"))]
    assert "fused_rnn/crossover/packaging-test-gpu.json" in names
    requires = meta.get_all("Requires-Dist")
    assert "torch>=2.4" in requires
    assert {"test", "bench"} <= set(meta.get_all("Provides-Extra"))
    assert any(r.startswith("pytest") and 'extra == "test"' in r for r in requires), requires


def test_installed_wheel_finds_its_own_sources(dists, tmp_path):
    """Installed (not editable) into a fresh folder, without dependencies (this
    environment's torch serves): the package is imported from there and its JIT build
    would compile the csrc/ it carries, the same files as this tree's."""
    _, wheel = dists
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                        "--quiet", "--target", str(target), str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    probe = ("import json, fused_rnn; from fused_rnn import _build; "
             "print(json.dumps(dict(file=fused_rnn.__file__, root=_build.ROOT, csrc=_build.CSRC, "
             "sources=_build.sources(), hash=_build.source_hash(), "
             "info=fused_rnn.backend_info(load=False)['sources'], "
             "tables=sorted(fused_rnn.policy.tables()))))")
    env = dict(os.environ, PYTHONPATH=str(target))
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    pkg = target / "fused_rnn"
    assert Path(got["file"]).parent == pkg, "imported the source tree, not the installed copy"
    assert Path(got["root"]) == pkg and Path(got["csrc"]) == pkg / "csrc" == Path(got["info"])
    assert got["sources"] == _build.sources(str(ROOT)) and got["sources"]
    assert all((pkg / s).is_file() for s in got["sources"])
    assert got["hash"] == _build.source_hash(str(ROOT))
    assert TABLE_DEVICE in got["tables"]  # the installed copy reads its shipped tables


def test_suite_collects_from_the_unpacked_sdist(dists, tmp_path):
    sdist, _ = dists
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    (top,) = list(tmp_path.iterdir())
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                        "tests"], cwd=top, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]  # 2 on a collection error
    # the tests import the sdist's own package, not this tree's
    r = subprocess.run([sys.executable, "-c", "import fused_rnn; print(fused_rnn.__file__)"],
                       cwd=top, env=env, capture_output=True, text=True, timeout=300)
    assert Path(r.stdout.strip()).parent == top / "fused_rnn", r.stdout + r.stderr
