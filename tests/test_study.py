"""The Optuna study behind a TPE sweep: how each trial's end reaches Optuna (multi-fidelity
wiring), where the study lives (a journal file in the experiment), and --resume continuing it."""

from __future__ import annotations

import pickle

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from inat_tune.tune.search import make_search_alg, to_tune_param_space
from inat_tune.tune.space import load_space

SPACE = {"model": "scratch_cnn", "method": "bayes", "metric": {"name": "val_acc", "goal": "maximize"},
         "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 3},
         "parameters": {"lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
                        "filters": {"values": [8, 16]}, "epochs": {"value": 3}}}


def _searcher(storage=None, **kw):
    spec = load_space(SPACE)
    s = make_search_alg(spec, seed=0, num_samples=6, storage=storage, study_name="s", quiet=True, **kw)
    s.set_search_properties(None, None, to_tune_param_space(spec))
    return s


def _run(s, tid: str, accs: list[float], *, asha_stops: bool = False, error: bool = False) -> None:
    """What Tune calls: on_trial_result for each result the scheduler lets through; the
    stopping result (ASHA's STOP, or the last epoch under ASHA: max_t) only to on_trial_complete."""
    assert s.suggest(tid) is not None
    last = len(accs)
    for epoch, acc in enumerate(accs, start=1):
        result = {"val_acc": acc, "training_iteration": epoch}
        if epoch < last or not (asha_stops or last == 3):
            s.on_trial_result(tid, result)
    s.on_trial_complete(tid, result={"val_acc": accs[-1], "training_iteration": last} if accs else None,
                        error=error)


def test_each_end_reaches_optuna_as_what_it_was():
    s = _searcher()
    _run(s, "a", [0.3, 0.5, 0.45])  # all 3 epochs: COMPLETE with its best epoch
    _run(s, "b", [0.1], asha_stops=True)  # cut at the first rung: PRUNED, value of its last step
    _run(s, "c", [0.2, 0.25], asha_stops=True)
    _run(s, "d", [0.4], error=True)  # raised after one epoch: FAIL
    trials = s._ot_study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED, TrialState.FAIL]
    assert trials[0].value == 0.5 and trials[0].intermediate_values == {1: 0.3, 2: 0.5, 3: 0.45}
    # the stopping result reaches Optuna as the trial's last intermediate value
    assert trials[1].intermediate_values == {1: 0.1} and trials[1].value == 0.1
    assert trials[2].intermediate_values == {1: 0.2, 2: 0.25} and trials[2].value == 0.25
    assert trials[3].value is None


def test_ray_behaviour_is_kept_for_the_ablation():
    """prune_stopped=False: stopped trials COMPLETE with their last value (Ray's OptunaSearch)."""
    s = _searcher(prune_stopped=False)
    _run(s, "a", [0.3, 0.5, 0.45])
    _run(s, "b", [0.1], asha_stops=True)
    trials = s._ot_study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert [t.value for t in trials] == [0.45, 0.1]


def test_concurrent_suggestions_use_the_constant_liar_and_the_budget():
    spec = load_space(SPACE)
    assert make_search_alg(spec, seed=0, max_concurrent=4, num_samples=30).searcher._sampler._constant_liar
    assert not make_search_alg(spec, seed=0, max_concurrent=1, num_samples=30).searcher._sampler._constant_liar
    assert make_search_alg(spec, seed=0, num_samples=30)._sampler._n_startup_trials == 10
    assert make_search_alg(spec, seed=0, num_samples=9)._sampler._n_startup_trials == 3


def test_the_study_in_its_journal_continues_after_a_resume(tmp_path):
    """Tune pickles the searcher with the experiment (tuner.pkl) and saves its state; --resume
    unpickles and restores it. The journal-backed study then holds every earlier trial with its
    state, and the next suggestion comes from TPE (enough finished trials for its model)."""
    journal = tmp_path / "optuna-journal.log"
    s = _searcher(JournalStorage(JournalFileBackend(str(journal))))
    for i, accs in enumerate(([0.3, 0.5, 0.45], [0.1], [0.6, 0.7, 0.72], [0.2, 0.2])):
        _run(s, f"t{i}", accs, asha_stops=len(accs) < 3)
    s.save(str(tmp_path / "searcher-state.pkl"))
    resumed = pickle.loads(pickle.dumps(s))
    resumed.restore(str(tmp_path / "searcher-state.pkl"))
    _run(resumed, "t4", [0.5, 0.6, 0.65])

    study = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(journal))))
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE, TrialState.PRUNED,
                      TrialState.COMPLETE]
    assert study.trials[2].value == 0.72 and study.best_trial.number == 2
    finished_before = sum(st in (TrialState.COMPLETE, TrialState.PRUNED) for st in states[:4])
    assert finished_before >= resumed._sampler._n_startup_trials  # t4 was a TPE suggestion


@pytest.mark.slow
def test_a_real_sweep_leaves_a_study_that_matches_its_trials(finished_experiment):
    """The session's real TPE + ASHA sweep: its journal holds one Optuna trial per Ray trial,
    PRUNED when ASHA stopped it, COMPLETE (best epoch's value) when it ran all its epochs, with
    every epoch as an intermediate value."""
    from inat_tune.analysis import load_history, load_results
    from inat_tune.tune.runner import OPTUNA_JOURNAL

    journal = finished_experiment / OPTUNA_JOURNAL
    assert journal.is_file()
    study = optuna.load_study(study_name="exp", storage=JournalStorage(JournalFileBackend(str(journal))))
    trials = load_results(finished_experiment)
    history = load_history(finished_experiment)
    assert len(study.trials) == len(trials)
    by_lr = {round(t.params["lr"], 12): t for t in study.trials}
    for _, row in trials.iterrows():
        ot = by_lr[round(row["config/lr"], 12)]
        curve = history[history["trial_id"] == row["trial_id"]].set_index("epoch")["val_acc"].to_dict()
        assert ot.intermediate_values == pytest.approx(curve)
        if row["epochs_run"] < row["epochs_budget"]:
            assert ot.state == TrialState.PRUNED
        else:
            assert ot.state == TrialState.COMPLETE and ot.value == pytest.approx(row["best_val_acc"])
