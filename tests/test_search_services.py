"""The search runner end to end, as a user runs it: ``gsa-search search`` processes on real storages.

Every test starts the CLI as separate processes with tiny trials (synthetic 8x8 images, one thread
each) and then reads the study back with Optuna and the results table from ``trials.csv``:

- several workers on one PostgreSQL study (separate commands, and ``--workers 2``) finish exactly the
  trial budget, with unique trial numbers and nothing left RUNNING;
- a search killed with SIGKILL in the middle of a trial (SQLite and PostgreSQL) resumes with the same
  command: finished trials are kept as they were, the killed one is recorded as ``died`` and its
  config is re-run, nothing is counted twice;
- a two-objective search on the real ``digits`` data prints a non-empty Pareto front with ``--json``;
- ``--workers 2`` without ``--storage`` shares a journal file in the study folder.

PostgreSQL tests are marked ``service`` (they skip without a server, and fail with ``CI=true``;
``.ci/run`` starts one). Fixtures: ``tests/services.py``.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from services import (
    GsaSearch,
    assert_study_done,
    is_counted,
    journal_storage,
    load_trials,
    read_table,
    tiny_args,
    wait_until,
)

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

pytestmark = pytest.mark.timeout(120)


# --- several workers on one PostgreSQL study --------------------------------------------------------------


@pytest.mark.service
@pytest.mark.slow
def test_two_processes_share_one_postgres_study(gsa: GsaSearch, postgres_study, tmp_path: Path) -> None:
    """Two separate ``gsa-search search`` commands on one PostgreSQL study together run exactly the
    budget: N finished trials, unique numbers, none RUNNING, one row per trial in trials.csv."""
    url, study = postgres_study
    n_trials = 6
    args = tiny_args(study, trials=n_trials, reports_dir=tmp_path / "reports", extra=["--storage", url])
    runs = [gsa.start(args), gsa.start(args)]
    for run in runs:
        code = run.wait(90)
        assert code == 0, run.describe()
    trials = load_trials(study, url)
    assert_study_done(trials, n_trials, tmp_path / "reports" / study, workers=2)
    pids = {t.user_attrs.get("pid") for t in trials}
    assert pids <= {run.pid for run in runs}, f"trials ran in unknown processes {pids}"


@pytest.mark.service
@pytest.mark.slow
def test_workers_2_on_postgres(gsa: GsaSearch, postgres_study, tmp_path: Path) -> None:
    """``--workers 2 --storage postgresql+psycopg://...`` in one command: exactly N trials, both
    worker processes recorded, the JSON result reports N trials and the storage without its password."""
    url, study = postgres_study
    n_trials = 6
    args = tiny_args(study, trials=n_trials, reports_dir=tmp_path / "reports", extra=["--storage", url, "--workers", "2", "--json"])
    run = gsa.run(args, timeout=100)
    document = json.loads(run.stdout)
    assert document["trials"] == n_trials
    assert document["storage"].startswith("postgresql+psycopg://")
    assert "postgres:postgres@" not in document["storage"], "the password leaked into the output"
    trials = load_trials(study, url)
    assert_study_done(trials, n_trials, tmp_path / "reports" / study, workers=2)
    workers = {t.user_attrs.get("worker") for t in trials}
    assert workers <= {0, 1}, workers
    assert run.pid not in {t.user_attrs.get("pid") for t in trials}, "trials ran in the parent, not in workers"


@pytest.mark.service
def test_concurrent_storage_creation_on_a_fresh_postgres_database(fresh_postgres_database) -> None:
    """Workers started together against a new, empty database (separate ``gsa-search`` commands, or
    machines) all open the storage; none fails because another one is creating the tables."""
    import threading

    from runners.optuna_runner import create_storage
    from runners.settings import SearchSettings

    errors: list[str] = []
    for _ in range(3):  # the collision is a race: give it three empty databases to show up
        url = fresh_postgres_database()
        barrier = threading.Barrier(4)
        storages = []

        def open_storage() -> None:
            barrier.wait()
            try:
                storages.append(create_storage(SearchSettings(storage=url, study="fresh")))
            except Exception as error:  # noqa: BLE001 - collected and asserted below
                errors.append(f"{type(error).__name__}: {error}")

        threads = [threading.Thread(target=open_storage) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        for storage in storages:
            storage.engine.dispose()
        if errors:
            break
    assert not errors, errors[0]


# --- SIGKILL in the middle of a trial, then the same command again ----------------------------------------


def _kill_mid_training(gsa: GsaSearch, args: list[str], study: str, storage: str, study_dir: Path,
                       epochs: int) -> tuple[int, int]:
    """Start ``args``; once >= 2 trials are finished and a RUNNING trial has been measured (its ``cost``
    is recorded: all its params are sampled and it trains) but not yet in its last epoch, SIGKILL the
    process group. Returns (killed trial number, pid of the killed process)."""
    run = gsa.start(args, new_session=True)
    handle: dict[str, object] = {}

    def training_trial():
        if "study" not in handle:
            if not (study_dir / "search.json").exists():  # written once the study exists
                return None
            handle["study"] = optuna.load_study(study_name=study, storage=storage)
        trials = handle["study"].get_trials(deepcopy=False)
        finished = [t for t in trials if t.state.is_finished()]
        training = [t for t in trials if t.state == TrialState.RUNNING and "cost" in t.user_attrs
                    and len(t.user_attrs.get("curve") or []) < epochs - 1]
        return training[0] if len(finished) >= 2 and training else None

    victim = wait_until(training_trial, timeout=60, interval=0.05, alive=run,
                        what="2 finished trials and one training")
    os.killpg(run.pid, signal.SIGKILL)
    code = run.process.wait(timeout=30)
    assert code == -signal.SIGKILL, run.describe()
    assert victim.user_attrs["pid"] == run.pid
    return victim.number, run.pid


@pytest.mark.slow
@pytest.mark.parametrize("storage_kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.service)])
def test_sigkill_mid_trial_then_resume(storage_kind: str, gsa: GsaSearch, study_name: str, tmp_path: Path,
                                       request: pytest.FixtureRequest) -> None:
    """SIGKILL while a trial trains, re-run the same command: finished trials kept with their values,
    the killed trial FAIL/'died' and its params re-run once (``retry_of``), exactly N counted, exit 0."""
    reports = tmp_path / "reports"
    study_dir = reports / study_name
    n_trials = 5
    if storage_kind == "postgres":
        url, study = request.getfixturevalue("postgres_study")
        assert study == study_name
        extra = ["--storage", url]
        storage = url
    else:
        extra = []
        storage = f"sqlite:///{study_dir / 'study.db'}"
    epochs = 3  # 512 samples: about a second of training per trial, time enough to be killed in it
    args = tiny_args(study_name, trials=n_trials, reports_dir=reports, epochs=epochs, samples=512, extra=extra)

    killed, killed_pid = _kill_mid_training(gsa, args, study_name, storage, study_dir, epochs)

    before = load_trials(study_name, storage)
    running = [t.number for t in before if t.state == TrialState.RUNNING]
    assert running == [killed], f"after SIGKILL exactly the killed trial is RUNNING: {running}"
    assert "cost" in next(t for t in before if t.number == killed).user_attrs, "killed before it trained"
    finished = {t.number: t for t in before if t.state.is_finished()}
    assert len(finished) >= 2
    assert len(finished) < n_trials, "the kill came too late to test a resume"

    rerun = gsa.run(args, timeout=90)  # the same command, to completion

    after = load_trials(study_name, storage)
    by_number = {t.number: t for t in after}
    table = assert_study_done(after, n_trials, study_dir, extra=1)  # N counted + the dead one
    for number, old in finished.items():  # nothing that had finished was touched
        new = by_number[number]
        assert (new.state, new.values, new.params) == (old.state, old.values, old.params), number
        assert new.user_attrs.get("status") == old.user_attrs.get("status"), number
    dead = by_number[killed]
    assert dead.state == TrialState.FAIL
    assert dead.user_attrs.get("status") == "died", dead.user_attrs
    assert str(killed_pid) in dead.user_attrs.get("reason", ""), dead.user_attrs.get("reason")
    assert not is_counted(dead)
    retries = [t for t in after if t.user_attrs.get("retry_of") is not None]
    assert [t.user_attrs["retry_of"] for t in retries] == [killed], "only the killed trial is retried, once"
    retry = retries[0]
    assert retry.number > killed and retry.params == dead.params
    assert is_counted(retry) and retry.user_attrs.get("pid") == rerun.pid
    row = table.set_index("trial").loc[killed]
    assert row["state"] == "died" and str(killed_pid) in row["reason"]


# --- a two-objective search on real data ------------------------------------------------------------------


def _dominates(a: dict, b: dict) -> bool:
    """Accuracy up, FLOPs down: ``a`` is no worse on both and better on one."""
    no_worse = a["accuracy"] >= b["accuracy"] and a["flops"] <= b["flops"]
    return no_worse and (a["accuracy"] > b["accuracy"] or a["flops"] < b["flops"])


@pytest.mark.slow
def test_two_objective_digits_json_pareto_front(gsa: GsaSearch, study_name: str, tmp_path: Path) -> None:
    """accuracy,flops on the real digits data: stdout is one JSON document whose ``pareto_front`` is
    non-empty, mutually non-dominated, and dominates every other completed trial of trials.csv."""
    reports = tmp_path / "reports"
    args = ["search", "--dataset", "digits", "--image-size", "8", "--epochs", "1", "--trials", "3",
            "--objectives", "accuracy,flops", "--sampler", "random", "--threads", "1", "--quiet", "--json",
            "--study", study_name, "--reports-dir", str(reports)]  # fmt: skip
    run = gsa.run(args, timeout=90)
    document = json.loads(run.stdout)  # the whole stdout is one JSON document
    assert document["objectives"] == ["accuracy", "flops"]
    assert document["directions"] == ["maximize", "minimize"]
    assert document["trials"] == 3 and not document["interrupted"]
    front = document["pareto_front"]
    assert front, f"empty Pareto front: {document['counts']}"
    for point in front:
        assert 0.0 <= point["accuracy"] <= 1.0 and point["flops"] > 0, point
    assert not any(_dominates(a, b) for a in front for b in front), front
    table = read_table(reports / study_name)
    on_front = {p["trial"] for p in front}
    for row in table[table["state"] == "complete"].to_dict("records"):
        if row["trial"] not in on_front:
            assert any(_dominates(p, row) for p in front), f"trial {row['trial']} is missing from the front"


# --- the journal file: several workers without a database ------------------------------------------------


@pytest.mark.slow
def test_workers_2_default_journal_storage(gsa: GsaSearch, study_name: str, tmp_path: Path) -> None:
    """``--workers 2`` without ``--storage`` (default ``--reports-dir reports``) stores the study in
    ``reports/<study>/journal.log`` (no SQLite file) and finishes with exactly N trials."""
    n_trials = 4
    run = gsa.run(tiny_args(study_name, trials=n_trials, reports_dir=None, extra=["--workers", "2", "--json"]),
                  timeout=100)
    study_dir = tmp_path / "reports" / study_name  # gsa runs in tmp_path
    journal = study_dir / "journal.log"
    document = json.loads(run.stdout)
    assert document["storage"] == f"journal:reports/{study_name}/journal.log"
    assert journal.is_file() and journal.stat().st_size > 0
    assert not (study_dir / "study.db").exists()
    assert document["trials"] == n_trials
    trials = load_trials(study_name, journal_storage(journal))
    assert_study_done(trials, n_trials, study_dir, workers=2)
    assert run.pid not in {t.user_attrs.get("pid") for t in trials}, "trials ran in the parent, not in workers"
