"""Every ``gsa-search`` command in the README runs.

The commands are read from the README's ``bash`` blocks. Each one is parsed by the real command
line (flags, choices, study files), then run in README order in one scratch reports folder, with
small budgets appended (argparse keeps the last value of a flag: ``--trials 1 --epochs 1``, one
seed, tiny benchmark sizes), so ``report`` and ``compare`` find the studies the commands before them
made. Placeholders are filled from the test services (PostgreSQL, a Ray head): without them those
commands skip, and fail under ``CI=true``. ``gsa-search demo`` is ``make demo`` (run on its own,
far longer than a test); here it is only parsed, and ``test_cli_consistency`` runs it on tiny study
files.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

from runners import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

pytestmark = pytest.mark.slow


def readme_commands() -> list[str]:
    """``gsa-search ...`` lines of the README's bash blocks (continuations joined, comments dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("gsa-search "):
                commands.append(" ".join(line.split()))
    return commands


COMMANDS = readme_commands()

# appended to each subcommand: the same command with a budget a test can afford
SMALL = {
    "search": ["--trials", "1", "--epochs", "1", "--quiet"],
    "ablate": ["--seeds", "1", "--epochs", "1", "--quiet"],
    "train": ["--epochs", "1", "--quiet"],
    "bench blocks": ["--sizes", "8", "--rounds", "1", "--repeats", "1"],
    "bench train": ["--skip-accuracy", "--rounds", "1"],
    "bench search": ["--trials", "1"],
    "bench throughput": ["--sizes", "8", "--rounds", "1", "--models", "proxy_resnet", "proxy_gsa_resnet"],
}


def test_the_readme_has_commands():
    subcommands = {c.split()[1] for c in COMMANDS}
    assert {"demo", "list", "inspect", "train", "search", "ablate", "report", "compare", "bench"} <= subcommands


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_parses(command):
    argv = shlex.split(command)[1:]
    if argv[:2] == ["bench", "pruning"]:
        from runners import bench_pruning

        bench_pruning.parse_args(argv[2:])
        return
    cli.parse_args(argv)


def _services(command: str) -> dict[str, str]:
    """Placeholder -> real value for the services a command needs (skips, or fails in CI, without)."""
    from services import (DEFAULT_POSTGRES_URL, DEFAULT_RAY_ADDRESS, POSTGRES_ENV, RAY_ENV, postgres_problem,
                                ray_problem, unavailable)

    out = {}
    if "postgresql+psycopg://" in command:
        url = os.environ.get(POSTGRES_ENV) or DEFAULT_POSTGRES_URL
        problem = postgres_problem(url)
        if problem:
            unavailable(f"README command {command!r} needs PostgreSQL ({POSTGRES_ENV}): {problem}")
        out[re.search(r"postgresql\+psycopg://\S+", command).group(0)] = url
    if "--address" in command:
        address = os.environ.get(RAY_ENV) or DEFAULT_RAY_ADDRESS
        problem = ray_problem(address)
        if problem:
            unavailable(f"README command {command!r} needs a Ray head ({RAY_ENV}): {problem}")
        out[re.search(r"--address (\S+)", command).group(1)] = address
    return out


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """One reports folder for all the commands (so `report X` finds what `search --study X` made),
    holding a copy of the committed reference studies, and the README's own search space file."""
    root = tmp_path_factory.mktemp("readme")
    reports = root / "reports"
    shutil.copytree(ROOT / "reports" / "reference", reports / "reference",
                    ignore=shutil.ignore_patterns("*.db", "journal.log"))
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    space = next(b for b in blocks if "def space(trial)" in b)
    (root / "my_space.py").write_text(space)
    return root


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.split()[1] not in ("demo",)])
def test_every_readme_command_runs(command, scratch, capsys):
    argv = shlex.split(command)[1:]
    for placeholder, value in _services(command).items():
        argv = [a.replace(placeholder, value) for a in argv]
    reports = scratch / "reports"
    argv = [str(scratch / a) if a.startswith("my_space.py") else a for a in argv]
    argv = [a.replace("reports/reference", str(reports / "reference")) for a in argv]
    if argv[:2] == ["bench", "pruning"]:
        argv += ["--trials", "2", "--epochs", "2", "--seeds", "0", "--reports-dir", str(scratch / "bench-pruning")]
    elif argv[0] == "bench":
        argv += SMALL.get(" ".join(argv[:2]), []) + ["--out", str(scratch / "bench")]
    else:
        argv += SMALL.get(argv[0], [])
    if argv[0] in ("search", "ablate", "report", "compare") and "--reports-dir" not in argv:
        argv += ["--reports-dir", str(reports)]
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code == 0, f"{command} -> exit {code}\n{captured.err[-2000:]}"
