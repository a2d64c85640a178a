"""scripts/readme_commands.py: the README's set-up commands, which .ci/run runs in a fresh
virtual environment."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import readme_commands  # noqa: E402


def test_the_readme_installs_pinned_torch_and_the_test_extra_then_runs_main_and_tests():
    cmds = readme_commands.commands((ROOT / "README.md").read_text(encoding="utf-8"))
    install = cmds[0]
    # torch pinned: an unpinned torch would pull several GB of CUDA wheels on CI
    torch_reqs = re.findall(r"\btorch\S*", install)
    assert torch_reqs and all(r.startswith("torch==") for r in torch_reqs), install
    assert "--no-build-isolation" in install and '-e ".[test]"' in install
    assert any(c.startswith("python benchmarks/bench.py") for c in cmds[1:])
    assert any(c.startswith("python -m pytest tests") for c in cmds[1:])


def test_the_script_prints_the_commands_ci_runs():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "readme_commands.py")],
                         check=True, capture_output=True, text=True).stdout
    assert out.splitlines() == readme_commands.commands((ROOT / "README.md").read_text())
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m venv" in ci and "system-site-packages" not in ci
    assert "scripts/readme_commands.py" in ci


def test_only_the_install_and_run_sections_count():
    text = """# x
## Install
Some words.
```bash
# a comment
pip install a

pip install b \\
    c
```
## Quick start
```bash
rm -rf /
```
## Run
```python
print("not bash")
```
```bash
python main.py   # main
```
"""
    assert readme_commands.commands(text) == ["pip install a", "pip install b \\", "    c",
                                              "python main.py   # main"]


@pytest.mark.parametrize("text", ["## Install\n```bash\npip install a\n```\n",
                                  "## Install\n```bash\npip install a\n```\n## Run\n```bash\n"])
def test_a_missing_or_open_section_is_an_error(text):
    with pytest.raises(ValueError):
        readme_commands.commands(text)
