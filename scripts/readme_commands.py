"""Print README.md's set-up commands, exactly as written there, one per line.

The commands are the bash code blocks under the README's "## Install" heading and
then its "## Run" heading (the main command and the test command), in that order.
`.ci/run` runs what this prints in a fresh virtual environment, so the README's
commands are what CI proves, not a copy of them.

    python scripts/readme_commands.py [README]
"""

from __future__ import annotations

import sys
from pathlib import Path

SECTIONS = ("Install", "Run")


def blocks(text: str, heading: str) -> list[list[str]]:
    """The ```bash blocks of the `## heading` section, each as its lines."""
    found, in_section, block = [], False, None
    for line in text.splitlines():
        if block is not None:
            if line.strip() == "```":
                found.append(block)
                block = None
            else:
                block.append(line)
        elif line.startswith("## "):
            in_section = line[3:].strip() == heading
        elif in_section and line.strip() in ("```bash", "```sh"):
            block = []
    if block is not None:
        raise ValueError(f"README: unclosed code block in section {heading!r}")
    return found


def commands(text: str) -> list[str]:
    """Every command line of the Install and Run blocks (blank lines and comment-only
    lines left out), in order. Each section must hold at least one command."""
    out = []
    for heading in SECTIONS:
        lines = [ln for b in blocks(text, heading) for ln in b
                 if ln.strip() and not ln.lstrip().startswith("#")]
        if not lines:
            raise ValueError(f"README: no bash command under '## {heading}'")
        out += lines
    return out


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "README.md"
    print("\n".join(commands(path.read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
