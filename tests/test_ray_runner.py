"""The Ray Tune backend: the same space, rule and results table as the Optuna runner, on a real Ray head.

- The Pareto-aware pruning decisions of the Ray ``TrialScheduler`` are those of the Optuna adapter
  for the same sequence of (trial, epoch, accuracy, cost) events (pure, no Ray cluster).
- Settings: the Ray options are validated before anything starts (pure).
- Through the CLI on a real head (``--address``, fixture ``ray_address``; ``.ci/run`` starts one on
  127.0.0.1): a two-objective digits search gives a results table with exactly the Optuna runner's
  columns; a driver killed with SIGKILL mid-search resumes with the same command; failures,
  infeasible configs and errors of the space are recorded as in the Optuna runner; bad Ray inputs
  are one line, exit 2, no traceback and no study folder.

Tiny trials: synthetic 8x8 data or digits at 8x8, 1-3 epochs, one thread per trial.
"""

from __future__ import annotations

import json
import os
import random
import signal
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from services import GsaSearch, read_table, tiny_args, wait_until

pytest.importorskip("ray.tune")
optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

from gsa_search.pruning import ParetoPruningRule  # noqa: E402
from runners.optuna_runner import pareto_decision, trial_records  # noqa: E402
from runners.settings import SearchSettings, UserError  # noqa: E402

pytestmark = pytest.mark.timeout(150)

COUNTED = {"complete", "pruned", "failed", "infeasible"}


# --- the adapters decide alike (pure) ----------------------------------------------------------------------


class _OptunaTrial:
    """What ``pareto_decision`` reads of an Optuna trial: number, user attrs, state, its study."""

    def __init__(self, number: int, study: "_OptunaStudy") -> None:
        self.number, self.study, self.user_attrs, self.state = number, study, {}, TrialState.RUNNING


class _OptunaStudy:
    def __init__(self) -> None:
        self.trials: dict[int, _OptunaTrial] = {}

    def get_trials(self, deepcopy: bool = False) -> list[_OptunaTrial]:
        return [self.trials[n] for n in sorted(self.trials)]


def _events(seed: int, n_trials: int = 8, epochs: int = 5) -> list[tuple]:
    """Random trials (cost, curve, fate) run by two interleaved workers: a list of
    ``(kind, trial, epoch, accuracy, cost)`` with kind ``start`` | ``epoch`` | ``infeasible`` | ``fail``."""
    rng = random.Random(seed)
    plans = []
    for n in range(n_trials):
        flops = rng.choice([1e6, 2e6, 2e6, 4e6, 8e6])
        quality = rng.random()
        curve = [round(min(0.99, quality * (0.5 + 0.5 * e / epochs) + rng.uniform(-0.05, 0.05)), 3)
                 for e in range(1, epochs + 1)]
        fate = rng.choices(["train", "infeasible", "fail"], weights=[8, 1, 1])[0]
        plans.append((n, {"flops": flops, "params": flops / 10}, curve, fate))
    queues = [list(plans[0::2]), list(plans[1::2])]
    events, running = [], [None, None]
    while any(queues) or any(running):
        w = rng.randrange(2)
        if running[w] is None:
            if not queues[w]:
                w = 1 - w
                if running[w] is None and not queues[w]:
                    continue
            if running[w] is None:
                n, cost, curve, fate = queues[w].pop(0)
                running[w] = [n, cost, curve, fate, 0]
                events.append(("start", n, 0, None, cost))
                if fate == "infeasible":
                    events.append(("infeasible", n, 0, 0.0, cost))
                    running[w] = None
                continue
        n, cost, curve, fate, done = running[w]
        if fate == "fail" and done == 2:
            events.append(("fail", n, done, None, cost))
            running[w] = None
            continue
        events.append(("epoch", n, done + 1, curve[done], cost))
        running[w][4] += 1
        if running[w][4] == len(curve):
            running[w] = None
    return events


def _replay_optuna(rule: ParetoPruningRule, events: list[tuple], epochs: int) -> list[tuple]:
    """The Optuna runner's objective, reduced to the pruning: user attrs, states, ``pareto_decision``."""
    study, out, stopped = _OptunaStudy(), [], set()
    for kind, n, epoch, accuracy, cost in events:
        if n in stopped:
            continue
        if kind == "start":
            trial = study.trials[n] = _OptunaTrial(n, study)
            trial.user_attrs["cost"] = dict(cost)
            continue
        trial = study.trials[n]
        if kind == "infeasible":
            trial.user_attrs["status"] = "infeasible"
            trial.state = TrialState.COMPLETE
            continue
        if kind == "fail":
            trial.user_attrs["status"] = "failed"
            trial.state = TrialState.FAIL
            continue
        curve = trial.user_attrs.setdefault("curve", [])
        curve.append(accuracy)
        others = trial_records(study.get_trials(), exclude=n)
        decision = pareto_decision(rule, trial, list(curve))
        if epoch < epochs:
            out.append((n, epoch, decision.prune, others))
        else:
            assert not decision.prune  # the last epoch is never a rung
        if decision.prune:
            trial.state = TrialState.PRUNED
            trial.user_attrs["reason"] = f"pruned at epoch {epoch} by the pareto pruner: {decision.reason}"
            stopped.add(n)
        elif epoch == epochs:
            trial.state = TrialState.COMPLETE
    return out, {n: t.user_attrs["reason"] for n, t in study.trials.items() if t.state == TrialState.PRUNED}


def _replay_ray(rule: ParetoPruningRule, events: list[tuple], epochs: int, decisions: Path) -> list[tuple]:
    """The Ray side: what Tune's controller calls on the scheduler, with the trainable's results."""
    from ray.tune.schedulers import TrialScheduler

    from runners.ray_scheduler import TRIAL_KEY, ParetoScheduler

    scheduler = ParetoScheduler(rule, decisions_path=str(decisions))
    trials, curves, out, stopped = {}, {}, [], set()

    def result(n: int, status: str, accuracy: float | None, cost: dict) -> dict:
        return {"trial": n, "status": status, "accuracy": float("nan") if accuracy is None else accuracy,
                "cost": json.dumps(cost), "curve": json.dumps(curves[n]), "training_iteration": len(curves[n])}

    for kind, n, epoch, accuracy, cost in events:
        if n in stopped:
            continue
        if kind == "start":
            trial = trials[n] = SimpleNamespace(trial_id=f"id{n:03d}x", config={TRIAL_KEY: n}, status="RUNNING",
                                                last_result={}, num_failures=0)
            curves[n] = []
            scheduler.on_trial_add(None, trial)
            continue
        trial = trials[n]
        if kind in ("infeasible", "fail"):
            last = result(n, "infeasible" if kind == "infeasible" else "failed", accuracy, cost)
            assert scheduler.on_trial_result(None, trial, last) == TrialScheduler.CONTINUE
            trial.last_result = last
            scheduler.on_trial_complete(None, trial, last)
            trial.status = "TERMINATED"
            continue
        curves[n].append(accuracy)
        status = "training" if epoch < epochs else "complete"
        last = result(n, status, accuracy, cost)
        others = scheduler.records(exclude=trial.trial_id)
        action = scheduler.on_trial_result(None, trial, last)
        trial.last_result = last
        if epoch < epochs:
            out.append((n, epoch, action == TrialScheduler.STOP, others))
        else:
            assert action == TrialScheduler.CONTINUE
        if action == TrialScheduler.STOP or epoch == epochs:
            scheduler.on_trial_complete(None, trial, last)
            trial.status = "TERMINATED"
            if action == TrialScheduler.STOP:
                stopped.add(n)
    return out, {int(k): v for k, v in json.loads(decisions.read_text()).items()} if decisions.exists() else {}


@pytest.mark.parametrize("seed", range(12))
def test_pareto_scheduler_decides_as_the_optuna_adapter(seed: int, tmp_path: Path) -> None:
    """The same hand-made (trial, epoch, accuracy, cost) sequence through the Optuna adapter
    (``pareto_decision`` on a study's trials) and the Ray ``ParetoScheduler`` (``on_trial_result`` on
    Tune's calls): identical prune/continue at every epoch, identical reasons, identical records of the
    other trials (the rule's inputs)."""
    epochs = 5
    rule = ParetoPruningRule(cost_keys=("flops",), max_epochs=epochs, min_dominators=2 if seed % 2 else 1)
    events = _events(seed, epochs=epochs)
    optuna_decisions, optuna_reasons = _replay_optuna(rule, events, epochs)
    ray_decisions, ray_reasons = _replay_ray(rule, events, epochs, tmp_path / "decisions.json")
    assert [d[:3] for d in ray_decisions] == [d[:3] for d in optuna_decisions]
    # the rule's inputs: the Optuna adapter also lists trials measured but not through an epoch yet
    # (cost recorded, empty curve), which Ray's scheduler only hears of with their first epoch; such
    # a record never counts (the rule compares accuracies at the same epoch, >= 1)
    trained = [[r for r in d[3] if r.curve] for d in optuna_decisions]
    assert [d[3] for d in ray_decisions] == trained
    assert ray_reasons == optuna_reasons


def test_the_replay_prunes_something() -> None:
    """The random sequences above exercise both outcomes (otherwise they would prove little)."""
    pruned = kept = 0
    for seed in range(12):
        epochs = 5
        rule = ParetoPruningRule(cost_keys=("flops",), max_epochs=epochs, min_dominators=2 if seed % 2 else 1)
        decisions, _ = _replay_optuna(rule, _events(seed, epochs=epochs), epochs)
        pruned += sum(d[2] for d in decisions)
        kept += sum(not d[2] for d in decisions)
    assert pruned >= 5 and kept >= 20, (pruned, kept)


def test_a_restarted_trial_starts_a_new_curve(tmp_path: Path) -> None:
    """A trial whose worker died restarts from scratch (Ray's ``num_failures`` goes up): its old
    curve no longer counts against others, as a dead Optuna trial's retry starts empty."""
    from runners.ray_scheduler import TRIAL_KEY, ParetoScheduler

    scheduler = ParetoScheduler(ParetoPruningRule(max_epochs=5), decisions_path=None)
    trial = SimpleNamespace(trial_id="a", config={TRIAL_KEY: 0}, status="RUNNING", last_result={}, num_failures=0)
    scheduler.on_trial_add(None, trial)
    scheduler.on_trial_result(None, trial, {"status": "training", "cost": '{"flops": 1}', "curve": "[0.5, 0.6]"})
    assert scheduler.records()[0].curve == (0.5, 0.6)
    trial.num_failures = 1
    scheduler.on_trial_result(None, trial, {"status": "training", "cost": '{"flops": 1}', "curve": "[0.2]"})
    assert scheduler.records()[0].curve == (0.2,)
    scheduler.on_trial_error(None, trial)
    assert scheduler.records() == []


# --- settings (pure) ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"objectives": ("accuracy", "flops"), "pruner": "asha"}, "prunes on one objective"),
        ({"pruner": "median"}, "is an Optuna pruner; with --backend ray use none, asha, pareto"),
        ({"storage": "sqlite:///x.db"}, "--storage is an option of the Optuna backend"),
        ({"workers": 2}, "--workers is an option of the Optuna backend"),
        ({"address": "nohost"}, "is not HOST:PORT"),
        ({"address": "127.0.0.1:99999"}, "is not HOST:PORT"),
        ({"gpus_per_trial": 1.5}, "a fraction must be below 1"),
        ({"gpus_per_trial": -1.0}, "--gpus-per-trial must be a number >= 0"),
        ({"cpus_per_trial": 0.0}, "--cpus-per-trial must be a positive number"),
        ({"max_failures": -1}, "--max-failures must be an integer >= 0"),
        ({"backend": "rey"}, "did you mean 'ray'"),
        ({"backend": "optuna", "address": "127.0.0.1:6379"}, "--address is an option of the Ray backend"),
        ({"backend": "optuna", "gpus_per_trial": 1.0}, "--gpus-per-trial is an option of the Ray backend"),
        ({"backend": "optuna", "pruner": "asha"}, "--pruner asha needs --backend ray"),
    ],
)
def test_bad_ray_settings_are_rejected(changes: dict, message: str) -> None:
    settings = SearchSettings(**{"backend": "ray", "dataset": "synthetic", **changes})
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        settings.validate()


def test_ray_defaults() -> None:
    single = SearchSettings(backend="ray", objectives=("accuracy",))
    assert single.resolved_pruner() == "asha"
    assert SearchSettings(backend="ray", objectives=("accuracy", "flops")).resolved_pruner() == "pareto"
    assert SearchSettings(backend="ray", objectives=("flops",)).resolved_pruner() == "none"
    assert single.resolved_cpus_per_trial() == 1.0 and single.resolved_max_failures() == 3
    import torch

    assert single.resolved_gpus_per_trial() == (1.0 if torch.cuda.is_available() else 0.0)
    assert SearchSettings(backend="ray", gpus_per_trial=0.25).validate().resolved_gpus_per_trial() == 0.25


# --- through the CLI, on a real Ray head ---------------------------------------------------------------------


SPACE = '''
from gsa_search.models import model_config
from gsa_search.trial import TrialConfig


def space(trial):
    width = trial.suggest_categorical("width_multiplier", [0.25, 0.5])
    lr = trial.suggest_float("lr", 1e-3, 3e-2, log=True)
    return TrialConfig(model=model_config("proxy_resnet", width_multiplier=width), recipe={"lr": lr})
'''


def _digits_args(study: str, reports: Path, space: str, extra: list[str]) -> list[str]:
    return ["search", "--space", space, "--dataset", "digits", "--image-size", "8", "--epochs", "1", "--trials", "3",
            "--objectives", "accuracy,flops", "--sampler", "random", "--threads", "1", "--quiet", "--json",
            "--study", study, "--reports-dir", str(reports), *extra]  # fmt: skip


@pytest.mark.service
@pytest.mark.slow
def test_two_objective_digits_search_same_table_as_optuna(gsa: GsaSearch, ray_address: str, study_name: str,
                                                          tmp_path: Path) -> None:
    """accuracy,flops on digits through ``--address``: it finishes, prints a non-empty Pareto front,
    and its results table has exactly the Optuna runner's columns for the same space (``backend`` ray)."""
    space = tmp_path / "space.py"
    space.write_text(SPACE)
    reports = tmp_path / "reports"
    ray_run = gsa.run(_digits_args(f"{study_name}-ray", reports, f"{space}:space",
                                   ["--backend", "ray", "--address", ray_address]), timeout=120)
    optuna_run = gsa.run(_digits_args(f"{study_name}-optuna", reports, f"{space}:space", []), timeout=90)
    document = json.loads(ray_run.stdout)  # stdout is one JSON document: nothing of Ray's own output
    assert document["backend"] == "ray" and document["trials"] == 3 and not document["interrupted"]
    assert document["counts"]["complete"] == 3, document["counts"]
    assert document["pareto_front"], document
    assert json.loads(optuna_run.stdout)["trials"] == 3
    ray_table = read_table(reports / f"{study_name}-ray")
    optuna_table = read_table(reports / f"{study_name}-optuna")
    assert list(ray_table.columns) == list(optuna_table.columns)
    assert {"param_width_multiplier", "param_lr"} <= set(ray_table.columns)
    assert set(ray_table["backend"]) == {"ray"} and set(optuna_table["backend"]) == {"optuna"}
    assert sorted(ray_table["trial"]) == [0, 1, 2]
    assert (ray_table["flops"] > 0).all() and ray_table["accuracy"].between(0, 1).all()
    assert (ray_table["epochs_run"] == 1).all() and ray_table["config"].map(lambda c: "model" in json.loads(c)).all()
    assert ray_table["pid"].notna().all() and ray_table["duration_s"].gt(0).all()
    assert Path(document["storage"]).is_absolute() and Path(document["storage"]).parent == reports / f"{study_name}-ray" / "ray"


@pytest.mark.service
@pytest.mark.slow
def test_sigkill_driver_then_resume(gsa: GsaSearch, ray_address: str, study_name: str, tmp_path: Path) -> None:
    """SIGKILL the driver's process group while trials run, re-run the same command: the experiment is
    restored, trials finished before the kill keep their values, every trial number appears once, the
    budget is reached."""
    reports = tmp_path / "reports"
    study_dir = reports / study_name
    n_trials = 5
    args = tiny_args(study_name, trials=n_trials, reports_dir=reports, epochs=3, samples=512,
                     extra=["--backend", "ray", "--address", ray_address, "--pruner", "none"])
    run = gsa.start(args, new_session=True)

    def two_done_one_running():
        try:
            table = read_table(study_dir)
        except (OSError, ValueError):
            return None
        done = table[table["state"] == "complete"]
        return [table] if len(done) >= 2 and (table["state"] == "running").any() else None

    [before] = wait_until(two_done_one_running, timeout=120, interval=0.1, alive=run,
                        what="2 finished trials and one running")
    os.killpg(run.pid, signal.SIGKILL)
    assert run.process.wait(timeout=30) == -signal.SIGKILL
    finished = before[before["state"] == "complete"].set_index("trial")
    assert len(finished) < n_trials, "the kill came too late to test a resume"

    rerun = gsa.run(args, timeout=150)
    assert "interrupted" not in rerun.stderr, rerun.describe()
    after = read_table(study_dir)
    assert sorted(after["trial"]) == list(range(n_trials)), after[["trial", "state"]]
    assert set(after["state"]) <= COUNTED, after[["trial", "state", "reason"]]
    by_trial = after.set_index("trial")
    for number, old in finished.iterrows():
        new = by_trial.loc[number]
        assert new["state"] == "complete"
        assert (new["accuracy"], new["flops"], new["params"]) == (old["accuracy"], old["flops"], old["params"]), number
        assert json.loads(new["config"]) == json.loads(old["config"]), number  # the same trained config
    assert "(ray, resumed)" in (study_dir / "log.txt").read_text()


@pytest.mark.service
@pytest.mark.slow
def test_failures_are_recorded_and_the_search_goes_on(ray_address: str, tmp_path: Path) -> None:
    """As in the Optuna runner: an invalid config, a diverging run and an error of the space are
    ``failed`` with their reason, an over-budget config ``infeasible`` with its cost; nothing retries."""
    from runners.ray_runner import run_ray_search

    space = tmp_path / "space.py"
    space.write_text(textwrap.dedent('''
        from gsa_search.models import model_config
        from gsa_search.trial import TrialConfig

        def space(trial):
            trial.suggest_categorical("width", [0.25, 0.5])
            kind = ["ok", "invalid", "diverges", "crash", "big"][trial.number % 5]
            if kind == "invalid":   # heads=3 does not divide the stage widths: the block builder says so
                return TrialConfig(model=model_config("proxy_gsa_resnet", heads=3))
            if kind == "diverges":
                return TrialConfig(model=model_config("proxy_resnet", width_multiplier=0.25),
                                   recipe={"lr": 1e12, "optimizer": "sgd", "epochs": 3, "batch_size": 16})
            if kind == "crash":
                raise RuntimeError("boom in the user's space")
            if kind == "big":
                return TrialConfig(model=model_config("proxy_resnet", width_multiplier=2.0))
            return TrialConfig(model=model_config("proxy_resnet", width_multiplier=0.25))
    '''))
    settings = SearchSettings(space=f"{space}:space", objectives=("accuracy",), n_trials=5, study="fails",
                              sampler="random", reports_dir=str(tmp_path / "reports"), dataset="synthetic", image_size=8,
                              dataset_options={"num_samples": 64}, recipe={"epochs": 2, "device": "cpu"}, threads=1,
                              max_params=500_000, pruner="none", backend="ray", address=ray_address)
    result = run_ray_search(settings, progress=False)
    table = result.table.set_index("trial")
    assert list(table["state"]) == ["complete", "failed", "failed", "failed", "infeasible"], table[["state", "reason"]]
    assert "invalid config" in table.loc[1, "reason"] and "heads=3 must divide" in table.loc[1, "reason"]
    assert "DivergenceError" in table.loc[2, "reason"] and table.loc[2, "flops"] > 0  # measured before training
    assert table.loc[3, "reason"] == "RuntimeError: boom in the user's space"
    assert "over budget: params" in table.loc[4, "reason"] and table.loc[4, "accuracy"] == 0.0
    assert table.loc[0, "epochs_run"] == 2 and table.loc[1, "epochs_run"] == 0
    assert result.counts["complete"] == 1 and not result.interrupted


# --- bad Ray inputs: one line, exit 2, nothing left -------------------------------------------------------


def _assert_user_error(run, expected: str, tmp_path: Path) -> None:
    lines = run.stderr.strip().splitlines()
    assert run.process.returncode == 2, run.describe()
    assert len(lines) == 1 and lines[0].startswith("gsa-search: error: ") and expected in lines[0], run.describe()
    assert "Traceback" not in run.stderr and run.stdout == ""
    assert not (tmp_path / "reports").exists(), list((tmp_path / "reports").rglob("*"))


def test_unreachable_address(gsa: GsaSearch, study_name: str, tmp_path: Path) -> None:
    run = gsa.run(tiny_args(study_name, trials=2, reports_dir=None, extra=["--backend", "ray", "--address",
                                                                            "127.0.0.1:1"]), expect=2, timeout=60)
    _assert_user_error(run, "cannot reach the Ray cluster at 127.0.0.1:1: Connection refused; start one with "
                            "`ray start --head`", tmp_path)


@pytest.mark.service
def test_more_gpus_per_trial_than_the_cluster_has(gsa: GsaSearch, ray_address: str, study_name: str,
                                                  tmp_path: Path) -> None:
    run = gsa.run(tiny_args(study_name, trials=2, reports_dir=None, extra=["--backend", "ray", "--address", ray_address,
                                                                            "--gpus-per-trial", "4"]), expect=2, timeout=60)
    _assert_user_error(run, f"--gpus-per-trial 4 is more than the Ray cluster at {ray_address} has", tmp_path)
