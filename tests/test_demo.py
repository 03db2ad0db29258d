"""``gsa-search demo`` interrupted with Ctrl-C continues where it stopped when run again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

DRIVER = """
import sys
from pathlib import Path
import runners.cli as cli
folder = Path(sys.argv[1])
cli.demo_files = lambda: [folder / "search.toml", folder / "ablate.toml"]
raise SystemExit(cli.main(["demo", "--reports-dir", str(folder / "reports"), "--workers", "1", "--threads", "1"]))
"""


def _files(folder: Path) -> None:
    (folder / "search.toml").write_text('command = "search"\nstudy = "tiny-search"\nspace = "gsa_block_v1"\n'
                                        'objectives = ["accuracy", "flops"]\ntrials = 1\nepochs = 1\n'
                                        'dataset = "digits"\n')
    (folder / "ablate.toml").write_text('command = "ablate"\nspec = "gsa_content_positional_v1"\nseeds = 1\n'
                                        'epochs = 1\n')
    (folder / "driver.py").write_text(DRIVER)


def _run(folder: Path, tag: str, *, interrupt_when: str | None = None) -> tuple[int, str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    err_path = folder / f"err-{tag}.txt"
    with open(err_path, "w") as err, open(folder / f"out-{tag}.txt", "w") as out:
        # SIGINT back to its default: a shell's background job inherits it ignored
        proc = subprocess.Popen([sys.executable, str(folder / "driver.py"), str(folder)], stdout=out, stderr=err,
                                env=env, cwd=folder, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        if interrupt_when is not None:
            deadline = time.monotonic() + 300
            while interrupt_when not in err_path.read_text() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2.0)  # into the first training run of that study
            proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=600)
    return code, (folder / f"out-{tag}.txt").read_text(), err_path.read_text()


def test_an_interrupted_demo_continues_where_it_stopped(tmp_path):
    _files(tmp_path)
    code, out, err = _run(tmp_path, "first", interrupt_when="gsa_content_positional_v1: 0/3")
    assert code == 130, err[-2000:]
    assert "interrupted: re-run `make demo`" in out
    assert "Traceback" not in err
    search_table = (tmp_path / "reports" / "tiny-search" / "trials.csv").read_text()

    code, out, err = _run(tmp_path, "second")
    assert code == 0, err[-2000:]
    assert "tiny-search: 1/1 trials done, 0 to run (resumed)" in err  # the finished search is not rerun
    # the ablation was stopped in its first run: that run (and only what is missing) runs again
    assert "gsa_content_positional_v1: 0/3 trials done, 3 to run" in err or \
        "gsa_content_positional_v1: 1/3 trials done, 2 to run (resumed)" in err
    assert "demo finished" in out
    assert (tmp_path / "reports" / "tiny-search" / "trials.csv").read_text() == search_table
    for study in ("tiny-search", "gsa_content_positional_v1"):
        assert (tmp_path / "reports" / study / "report.html").stat().st_size > 0
        assert (tmp_path / "reports" / study / "config.toml").exists()
