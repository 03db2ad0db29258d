"""Test helpers for real services and for the ``gsa-search`` command run as separate processes.

- :func:`postgres_url`: the URL of a reachable PostgreSQL (``GSA_SEARCH_TEST_POSTGRES``, default
  :data:`DEFAULT_POSTGRES_URL`); skips where none is reachable, fails with ``CI=true`` (``.ci/run``
  starts one from Debian's ``postgresql`` package).
- :func:`gsa`: a :class:`GsaSearch` that starts ``gsa-search`` processes (one thread each) with
  their output in files, and kills whatever is still running (its whole process group) afterwards.
- :func:`study_name`: a fresh study name per test; :func:`postgres_study` also deletes that study
  from PostgreSQL after the test (once its processes are gone).
- Reading a study: :func:`load_trials`, :func:`counted`, :func:`assert_study_done`.

``conftest.py`` imports the fixtures, so every test module can request them by name.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest

__all__ = [
    "DEFAULT_POSTGRES_URL",
    "POSTGRES_ENV",
    "GsaSearch",
    "postgres_problem",
    "postgres_url",
    "fresh_postgres_database",
    "ensure_optuna_schema",
    "gsa",
    "study_name",
    "postgres_study",
    "tiny_args",
    "load_trials",
    "counted",
    "assert_study_done",
    "wait_until",
]

POSTGRES_ENV = "GSA_SEARCH_TEST_POSTGRES"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres:postgres@127.0.0.1:5432/optuna_test"
CONNECT_TIMEOUT_S = 3

_HOW_TO_START = (
    "start one as root with `apt-get install -y postgresql && pg_ctlcluster --skip-systemctl-redirect "
    "$(ls /etc/postgresql) main start`, set the password and create the database (see .ci/run, which does "
    f"all of it), or point {POSTGRES_ENV} at a reachable server"
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def unavailable(reason: str) -> None:
    """Skip the test, or fail it under ``CI=true`` (where the service must be there)."""
    if in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _redact(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for messages
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


@functools.lru_cache(maxsize=None)
def postgres_problem(url: str) -> str | None:
    """Why ``url`` cannot be used (one line), or ``None`` when a connection and ``SELECT 1`` work."""
    try:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url
        from sqlalchemy.pool import NullPool

        connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if make_url(url).drivername.startswith("postgresql") else {}
        engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as error:  # noqa: BLE001 - any failure means "not usable", with its reason
        detail = str(getattr(error, "orig", None) or error).strip().splitlines()
        return f"{type(error).__name__}: {detail[0] if detail else ''}"
    return None


@pytest.fixture
def postgres_url() -> str:
    """A reachable PostgreSQL SQLAlchemy URL (skip, or fail with ``CI=true``, when there is none)."""
    url = os.environ.get(POSTGRES_ENV) or DEFAULT_POSTGRES_URL
    problem = postgres_problem(url)
    if problem is not None:
        unavailable(f"PostgreSQL at {_redact(url)} ({POSTGRES_ENV}) is not reachable: {problem}; {_HOW_TO_START}")
    return url


@pytest.fixture
def fresh_postgres_database(postgres_url: str) -> Iterator[Callable[[], str]]:
    """A factory: each call creates a new, empty database on the server of ``postgres_url`` and
    returns its URL; all of them are dropped after the test."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    admin = create_engine(postgres_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    created: list[str] = []

    def create() -> str:
        name = f"gsa_fresh_{uuid.uuid4().hex[:12]}"
        try:
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        except Exception as error:  # noqa: BLE001 - e.g. no CREATEDB privilege
            unavailable(f"cannot create a scratch database on {_redact(postgres_url)}: {error}")
        created.append(name)
        return make_url(postgres_url).set(database=name).render_as_string(hide_password=False)

    try:
        yield create
    finally:
        with admin.connect() as connection:
            for name in created:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# --- the CLI as processes -------------------------------------------------------------------------------


def _command() -> list[str]:
    script = Path(sys.executable).parent / "gsa-search"
    return [str(script)] if script.exists() else [sys.executable, "-m", "runners.cli"]


def tiny_args(study: str, *, trials: int, reports_dir: str | os.PathLike[str] | None, epochs: int = 1,
              samples: int = 64, extra: Sequence[str] = ()) -> list[str]:
    """``search`` arguments for tiny trials on synthetic 8x8 data, random sampler, one thread."""
    args = ["search", "--dataset", "synthetic", "--image-size", "8", "--dataset-option", f"num_samples={samples}",
            "--epochs", str(epochs), "--sampler", "random", "--quiet", "--threads", "1", "--study", study,
            "--trials", str(trials)]  # fmt: skip
    if reports_dir is not None:
        args += ["--reports-dir", str(reports_dir)]
    return args + list(extra)


class Run:
    """One started ``gsa-search`` process; its stdout/stderr go to files."""

    def __init__(self, process: subprocess.Popen, out: Path, err: Path, argv: list[str], new_session: bool) -> None:
        self.process, self.out_path, self.err_path, self.argv, self.new_session = process, out, err, argv, new_session

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"gsa-search did not finish within {timeout:.0f} s\n{self.describe()}", pytrace=False)

    def kill(self) -> None:
        """SIGKILL the process (its whole process group when it has its own session) and reap it."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if self.new_session:
                    os.killpg(self.process.pid, signal.SIGKILL)
                else:
                    self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        if self.new_session:  # spawned workers of a killed group: gone too (same group)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def describe(self) -> str:
        tail = "\n".join(self.stderr.splitlines()[-40:])
        return f"command: {' '.join(self.argv)}\nexit code: {self.process.poll()}\nstderr (tail):\n{tail}"


class GsaSearch:
    """Starts ``gsa-search`` processes with ``OMP_NUM_THREADS=1`` in ``cwd``; :meth:`kill_all` ends them."""

    def __init__(self, cwd: Path, logs: Path) -> None:
        self.cwd = cwd
        self.logs = logs
        self.runs: list[Run] = []

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        return env

    def start(self, args: Sequence[str], *, new_session: bool = True) -> Run:
        """Start ``gsa-search ARGS``; with ``new_session`` it leads its own process group (for killpg)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        index = len(self.runs)
        out, err = self.logs / f"run{index}.out", self.logs / f"run{index}.err"
        argv = _command() + list(args)
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            process = subprocess.Popen(argv, cwd=self.cwd, env=self.env(), stdin=subprocess.DEVNULL, stdout=stdout,
                                       stderr=stderr, start_new_session=new_session)  # fmt: skip
        run = Run(process, out, err, argv, new_session)
        self.runs.append(run)
        return run

    def run(self, args: Sequence[str], *, timeout: float = 60, expect: int | None = 0) -> Run:
        """Start ``gsa-search ARGS``, wait for it; checks the exit code unless ``expect`` is None."""
        run = self.start(args)
        code = run.wait(timeout)
        if expect is not None:
            assert code == expect, f"exit code {code}, expected {expect}\n{run.describe()}"
        return run

    def kill_all(self) -> None:
        for run in self.runs:
            run.kill()


@pytest.fixture
def gsa(tmp_path: Path) -> Iterator[GsaSearch]:
    """Runs ``gsa-search`` in ``tmp_path``; kills anything still running after the test."""
    runner = GsaSearch(tmp_path, tmp_path / "logs")
    try:
        yield runner
    finally:
        runner.kill_all()


@pytest.fixture
def study_name(request: pytest.FixtureRequest) -> str:
    """A fresh, valid study name: the test's name plus a random suffix."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-.")[:60] or "study"
    return f"t-{stem}-{uuid.uuid4().hex[:10]}"


@functools.lru_cache(maxsize=None)
def ensure_optuna_schema(url: str) -> None:
    """Create Optuna's tables in the database at ``url`` once, before any worker opens it: workers
    that create them at the same moment on an empty database collide (see
    ``test_concurrent_storage_creation_on_a_fresh_postgres_database``)."""
    import optuna

    storage = optuna.storages.RDBStorage(url)
    storage.engine.dispose()


@pytest.fixture
def postgres_study(postgres_url: str, study_name: str, gsa: GsaSearch) -> Iterator[tuple[str, str]]:
    """``(url, study name)`` on PostgreSQL with Optuna's tables in place; the study is deleted
    afterwards (its processes killed first)."""
    ensure_optuna_schema(postgres_url)
    yield postgres_url, study_name
    gsa.kill_all()
    import optuna

    with contextlib.suppress(KeyError):  # never created (the test failed early)
        optuna.delete_study(study_name=study_name, storage=postgres_url)


# --- reading a study ------------------------------------------------------------------------------------


def load_trials(study: str, storage: Any) -> list[Any]:
    """All trials of ``study`` (FrozenTrials, by number) in ``storage`` (URL or storage object)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return sorted(optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False),
                  key=lambda t: t.number)


def is_counted(trial: Any) -> bool:
    """Does ``trial`` use up the budget: complete (incl. infeasible), pruned, or failed for its own reason?"""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get("status") == "failed"


def counted(trials: Sequence[Any]) -> int:
    return sum(is_counted(t) for t in trials)


def journal_storage(path: Path) -> Any:
    import optuna

    backend = optuna.storages.journal.JournalFileBackend(
        str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path))
    )
    return optuna.storages.JournalStorage(backend)


def read_table(study_dir: Path) -> Any:
    import pandas as pd

    return pd.read_csv(study_dir / "trials.csv")


def assert_study_done(trials: Sequence[Any], n_trials: int, study_dir: Path, *, extra: int = 0,
                      workers: int = 1) -> Any:
    """The study holds exactly ``n_trials`` counted trials (plus ``extra`` uncounted ones), unique
    numbers, nothing RUNNING or WAITING, and ``trials.csv`` has one row per trial; returns the table.

    With ``workers`` > 1, two workers can both see n-1 counted trials and both start one; the later
    one steps back as a ``surplus`` record before sampling anything (Optuna's storage cannot create a
    trial only if fewer than N exist). At most ``workers - 1`` such records are allowed; each must be
    FAIL, never sampled or trained, and absent from ``trials.csv``."""
    from optuna.trial import TrialState

    numbers = [t.number for t in trials]
    summary = [(t.number, t.state.name, t.user_attrs.get("status"), t.user_attrs.get("pid")) for t in trials]
    assert len(numbers) == len(set(numbers)), f"duplicate trial numbers: {summary}"
    assert sorted(numbers) == list(range(len(numbers))), f"trial numbers are not 0..n-1: {summary}"
    surplus = [t for t in trials if t.user_attrs.get("status") == "surplus"]
    assert len(surplus) <= workers - 1, f"{len(surplus)} surplus trials with {workers} worker(s): {summary}"
    for t in surplus:
        assert t.state == TrialState.FAIL and not t.params and "config" not in t.user_attrs \
            and "curve" not in t.user_attrs, f"surplus trial {t.number} sampled or trained: {summary}"
    left = [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not left, f"trials left RUNNING/WAITING: {left}; {summary}"
    assert counted(trials) == n_trials, f"{counted(trials)} counted trials, expected {n_trials}: {summary}"
    assert len(trials) - len(surplus) == n_trials + extra, f"{len(trials)} trials, expected {n_trials} + {extra}: {summary}"
    table = read_table(study_dir)
    shown = sorted(t.number for t in trials if t.user_attrs.get("status") != "surplus")
    assert sorted(table["trial"].tolist()) == shown, f"trials.csv rows {table['trial'].tolist()} != {shown}"
    assert not table["state"].isin(["running", "waiting"]).any(), table[["trial", "state"]]
    return table


def wait_until(condition: Callable[[], Any], *, timeout: float, interval: float = 0.05,
               alive: Run | None = None, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy (returned); fails on timeout, or when
    ``alive`` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if alive is not None and alive.poll() is not None:
            pytest.fail(f"gsa-search exited before {what}\n{alive.describe()}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}"
                        + (f"\n{alive.describe()}" if alive is not None else ""), pytrace=False)
        time.sleep(interval)


# --- Ray: a head started with `ray start --head` on loopback ------------------------------------------------

__all__ += ["RAY_ENV", "DEFAULT_RAY_ADDRESS", "ray_problem", "ray_address"]

RAY_ENV = "GSA_SEARCH_TEST_RAY"
DEFAULT_RAY_ADDRESS = "127.0.0.1:6380"

_HOW_TO_START_RAY = (
    "start one with `.venv/bin/ray get-auth-token --generate >/dev/null && RAY_AUTH_MODE=token "
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 .venv/bin/ray start --head --node-ip-address=127.0.0.1 --port=6380 "
    f"--num-cpus=2 --include-dashboard=false --disable-usage-stats` (see .ci/run), or point {RAY_ENV} at a "
    "running head (HOST:PORT)"
)


@functools.lru_cache(maxsize=None)
def ray_problem(address: str) -> str | None:
    """Why no Ray head answers at ``address`` (one line), or ``None`` when its GCS port accepts a
    connection."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except (OSError, ValueError) as error:
        return f"{type(error).__name__}: {error}"
    return None


@pytest.fixture
def ray_address() -> str:
    """``HOST:PORT`` of a running Ray head (``GSA_SEARCH_TEST_RAY``, default 127.0.0.1:6380); skip, or
    fail with ``CI=true``, when none answers. (The Ray runner itself turns on token authentication
    when a token is present and keeps a loopback address on loopback.)"""
    address = os.environ.get(RAY_ENV) or DEFAULT_RAY_ADDRESS
    problem = ray_problem(address)
    if problem is not None:
        unavailable(f"no Ray head at {address} ({RAY_ENV}): {problem}; {_HOW_TO_START_RAY}")
    return address
