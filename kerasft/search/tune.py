"""``kerasft tune CONFIG --trials N``: an Optuna search over the config's ``tune.params``.

Every trial is an ordinary run folder, ``<search dir>/trials/<name>-trial<N>``, trained by
:meth:`kerasft.api.FineTuner.fit` exactly as ``kerasft train`` trains (no export): the trial's
config is CONFIG (with ``--set``) plus the trial's values at the dotted keys of ``tune.params``.
The objective is a validation metric (``tune.metric``): a value of the validation split's report
(``val_macro_f1``: ``macro_f1`` of :func:`kerasft.evaluation.metrics.classification_report`) of
the final model, or one that only ``fit`` logs (``val_loss``, ``val_auc``: its last epoch's
value); never the test split.

Optuna keeps the study in ``<search dir>/study.db`` (SQLite): running the same command again
continues it. ``--trials N`` is the total: completed, pruned and failed trials count, and a trial
that a kill left running is marked failed and run again with the same values. The pruner
(``tune.pruner: median``) sees the metric at the end of every epoch (epochs numbered across
stages); a metric that ``fit`` does not log (``val_macro_f1``) is computed on the validation
split at each epoch end, one extra prediction pass.

At the end: a table (trial, params, metric, state), ``search.json``, ``best.yaml`` (the best
trial's full config, input paths absolute: ``kerasft train best.yaml``) and ``search.png``.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from kerasft.config import (
    TUNE_REPORT_METRICS,
    Config,
    apply_override,
    head_task,
    load_config,
    refuse_token_task,
    resolve_input_paths,
    tune_direction,
)
from kerasft.errors import ConfigError, KerasftError, expected
from kerasft.io import atomic_write
from kerasft.search.report import format_value, plot_search, table

Log = Callable[[str], None]
STUDY_FILE = "study.db"
INTERRUPTED = "interrupted_trials"  # study user attribute: numbers re-run after a kill


def import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise KerasftError("kerasft tune: expected Optuna to be installed (pip install "
                           "'kerasft[tune]'). Received: no module named optuna") from None
    return optuna


def resolve_metric(cfg: Config, task: str | None) -> str:
    """``tune.metric``; ``auto`` is ``val_mae`` for regression, else ``val_macro_f1``."""
    metric = cfg.tune.metric
    if metric == "auto":
        return "val_mae" if task == "regression" else "val_macro_f1"
    return metric


def search_dir(cfg: Config) -> Path:
    return Path(cfg.tune.dir) if cfg.tune.dir else Path(cfg.output_dir) / f"{cfg.name}-tune"


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def suggest(trial: Any, key: str, spec: dict[str, Any], current: Any) -> Any:
    """The trial's value for one ``tune.params`` entry (Optuna's ``suggest_*``). Choices that
    are not scalars (``head.hidden_units: {choices: [[], [64]]}``) are suggested by their JSON
    text, which Optuna stores."""
    if "choices" in spec:
        choices = spec["choices"]
        if all(_scalar(c) for c in choices):
            return trial.suggest_categorical(key, choices)
        texts = [json.dumps(c) for c in choices]
        return choices[texts.index(trial.suggest_categorical(key, texts))]
    low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
    step = spec.get("step")
    whole = all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)) and \
        (step is None or isinstance(step, int)) and not isinstance(current, float)
    if whole:
        return trial.suggest_int(key, low, high, step=step or 1, log=log)
    return trial.suggest_float(key, float(low), float(high), log=log,
                               step=None if step is None else float(step))


def _current(cfg: Config, dotted: str) -> Any:
    node: Any = cfg.to_dict()
    for part in dotted.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
    return node


def trial_config(cfg: Config, params: dict[str, Any]) -> Config:
    """`cfg` with the trial's values at their dotted keys (validated like ``--set``)."""
    data = cfg.to_dict()
    for key, value in params.items():
        apply_override(data, key.split("."), value)
    try:
        return load_config(data)
    except ConfigError as e:
        raise ConfigError(f"tune: the trial's values {params} make an invalid config: {e}"
                          ) from None


def best_config_yaml(cfg: Config, params: dict[str, Any], header: str) -> str:
    """The best trial's config as a YAML a user can train anywhere: input paths absolute
    (they were relative to the working directory of the search), ``tune.params`` kept."""
    data = resolve_input_paths(trial_config(cfg, params).to_dict(), os.getcwd())
    load_config(data)  # still valid
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def pruning_callback(trial: Any, metric: str, score: Callable[[], float | None]) -> Any:
    """A Keras callback reporting `metric` to the Optuna `trial` at every epoch end (from the
    epoch's logs, else ``score()``) and raising ``optuna.TrialPruned`` when the pruner says so
    (optuna-integration's Keras callback does the same, for ``keras.callbacks`` only)."""
    import keras

    optuna = import_optuna()

    class OptunaPruning(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            value = (logs or {}).get(metric)
            if value is None:
                value = score()
            if value is None:
                return
            trial.report(float(value), step=epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch + 1}: {metric}="
                                         f"{float(value):.4g}")

    return OptunaPruning()


def _validation_score(ft: Any, key: str) -> float | None:
    """`key` of the validation split's report for the model as it is now."""
    from kerasft.evaluation.metrics import classification_report, regression_report

    split = ft.data.validation if ft.data is not None else None
    if split is None:
        return None
    probabilities = ft._predict_split(ft.model, split)
    if ft.regression:
        report = regression_report(split.labels, probabilities)
    else:
        report = classification_report(split.labels, probabilities, ft.class_names,
                                       multi_label=ft.multi_label,
                                       threshold=ft.config.head.threshold)
    value = report.get(key)
    return None if value is None else float(value)


def _objective_value(ft: Any, summary: dict[str, Any], metric: str) -> float:
    key = metric[len("val_"):]
    if key in TUNE_REPORT_METRICS:
        report = summary.get("metrics")
        if not report or report.get("split") != "validation":
            report = ft.evaluate(split="validation")
        value = report.get(key)
    else:
        logs = summary["stages"][-1]["final_logs"] if summary["stages"] else {}
        value = logs.get(metric)
    if value is None:
        raise KerasftError(expected(f"a value of {metric} for the trial (a validation split; "
                                    f"{metric} defined for this task)", "tune.metric", metric))
    return float(value)


def _trial_rows(study: Any, optuna: Any) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        reported = t.intermediate_values
        rows.append({
            "trial": t.number, "state": t.state.name, "value": t.value if t.values else None,
            "params": dict(t.params), "run_dir": t.user_attrs.get("run_dir"),
            "error": t.user_attrs.get("error"),
            "last_reported": reported[max(reported)] if reported else None,
        })
    return rows


def _counted(study: Any, optuna: Any) -> int:
    interrupted = set(study.user_attrs.get(INTERRUPTED, []))
    states = optuna.trial.TrialState
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (states.COMPLETE, states.PRUNED)
               or (t.state == states.FAIL and t.number not in interrupted))


def run_search(config: str | os.PathLike | dict[str, Any] | Config,
               overrides: Sequence[str] = (), trials: int | None = None,
               directory: str | os.PathLike | None = None, log: Log = print) -> dict[str, Any]:
    """Runs (or continues) the search; returns ``search.json``'s content (see the module doc)."""
    optuna = import_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # kerasft prints each trial itself
    cfg = load_config(config, overrides)
    if not cfg.tune.params:
        raise ConfigError(expected("at least one config key to search, e.g. tune: {params: "
                                   "{head.dropout: {choices: [0.1, 0.3]}}}", "tune.params",
                                   cfg.tune.params))
    refuse_token_task(cfg)
    total = trials if trials is not None else cfg.tune.trials
    if total < 1:
        raise ConfigError(expected("a positive number of trials", "--trials", total))
    task = head_task(cfg.head)
    if task is None and cfg.tune.metric == "auto" and cfg.data.source == "csv":
        from kerasft.api import FineTuner  # the labels decide: regression or classification

        probe = FineTuner(copy.deepcopy(cfg), log=lambda line: None)
        probe.load_data(report=False)  # resolves head.task
        task = probe.config.head.task
    metric = resolve_metric(cfg, task)
    direction = tune_direction(metric, cfg.tune.direction)
    folder = Path(directory) if directory else search_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(folder / STUDY_FILE).resolve()}"
    study = optuna.create_study(
        study_name=cfg.name, storage=storage, load_if_exists=True, direction=direction,
        sampler=None, pruner=optuna.pruners.NopPruner())
    recorded = study.user_attrs.get("objective")
    if recorded is not None and recorded != [metric, direction]:
        raise ConfigError(f"{folder / STUDY_FILE}: expected the study's objective "
                          f"{recorded[0]} ({recorded[1]}); a new tune.metric / tune.direction "
                          f"needs another search folder (tune.dir). Received: tune.metric="
                          f"{metric} ({direction})")
    study.set_user_attr("objective", [metric, direction])
    states = optuna.trial.TrialState
    interrupted = list(study.user_attrs.get(INTERRUPTED, []))
    for t in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
        # One search process per folder: a trial still running was killed with its process.
        study.tell(t.number, state=states.FAIL)
        study.enqueue_trial(dict(t.params))
        interrupted.append(t.number)
        log(f"tune: trial {t.number} was interrupted; it runs again with the same values")
    study.set_user_attr(INTERRUPTED, interrupted)
    seed = cfg.seed + len(study.get_trials(deepcopy=False))  # a resumed sampler draws anew
    study.sampler = (optuna.samplers.RandomSampler(seed=seed) if cfg.tune.sampler == "random"
                     else optuna.samplers.TPESampler(seed=seed))
    study.pruner = (optuna.pruners.MedianPruner() if cfg.tune.pruner == "median"
                    else optuna.pruners.NopPruner())
    done = _counted(study, optuna)
    atomic_write(folder / "search.yaml", cfg.to_yaml())
    log(f"tune: {folder} ({STUDY_FILE}), {metric} ({direction}), {done} of {total} trials done")
    while done < total:
        _run_trial(study, cfg, metric, folder, optuna, log)
        done = _counted(study, optuna)
    return _finish(study, cfg, metric, direction, folder, optuna, log)


def _run_trial(study: Any, cfg: Config, metric: str, folder: Path, optuna: Any,
               log: Log) -> None:
    import keras

    from kerasft.api import FineTuner

    trial = study.ask()
    states = optuna.trial.TrialState
    params = {key: suggest(trial, key, spec, _current(cfg, key))
              for key, spec in cfg.tune.params.items()}
    shown = ", ".join(f"{k}={format_value(v)}" for k, v in params.items())
    log(f"tune: trial {trial.number}: {shown}")
    ft = None
    try:
        trial_cfg = trial_config(cfg, params)
        ft = FineTuner(trial_cfg, log=log)
        key = metric[len("val_"):]
        score = (lambda: _validation_score(ft, key)) if key in TUNE_REPORT_METRICS \
            else (lambda: None)
        summary = ft.fit(output_dir=folder / "trials", run_id=f"trial{trial.number}",
                         callbacks=[pruning_callback(trial, metric, score)])
        trial.set_user_attr("run_dir", summary["run_dir"])
        value = _objective_value(ft, summary, metric)
        study.tell(trial, value)
        log(f"tune: trial {trial.number}: {metric}={value:.4f}")
    except optuna.TrialPruned as e:
        if ft is not None and ft.run_dir is not None:
            trial.set_user_attr("run_dir", str(ft.run_dir))
        study.tell(trial, state=states.PRUNED)
        log(f"tune: trial {trial.number}: {e}")
    except KerasftError as e:  # e.g. a learning rate that diverges: the search goes on
        trial.set_user_attr("error", str(e))
        study.tell(trial, state=states.FAIL)
        log(f"tune: trial {trial.number} failed: {e}")
    finally:
        keras.backend.clear_session()


def _finish(study: Any, cfg: Config, metric: str, direction: str, folder: Path, optuna: Any,
            log: Log) -> dict[str, Any]:
    rows = _trial_rows(study, optuna)
    keys = list(cfg.tune.params)
    lines = table(["trial", *keys, metric, "state"],
                  [[r["trial"], *(r["params"].get(k) for k in keys), r["value"], r["state"]]
                   for r in rows])
    for line in lines:
        log(line)
    result: dict[str, Any] = {"metric": metric, "direction": direction, "trials": rows,
                              "best": None}
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    if complete:
        best = study.best_trial
        result["best"] = {"trial": best.number, "value": best.value, "params": best.params,
                          "run_dir": best.user_attrs.get("run_dir")}
        params = {k: v for k, v in best.params.items() if k in cfg.tune.params}
        # Non-scalar choices are stored by their JSON text.
        params = {k: (json.loads(v) if isinstance(v, str) and "choices" in cfg.tune.params[k]
                      and not all(_scalar(c) for c in cfg.tune.params[k]["choices"]) else v)
                  for k, v in params.items()}
        header = (f"# kerasft tune: the best of {len(rows)} trials in {folder}: trial "
                  f"{best.number}, {metric}={best.value:.4f}\n# train it: kerasft train "
                  f"{folder / 'best.yaml'}\n")
        atomic_write(folder / "best.yaml", best_config_yaml(cfg, params, header))
        log(f"tune: best trial {best.number} ({metric}={best.value:.4f}): "
            f"{folder / 'best.yaml'}")
    else:
        log("tune: no trial completed: no best.yaml")
    atomic_write(folder / "search.json", json.dumps(result, indent=1, default=str) + "\n")
    if plot_search(rows, metric, direction, folder / "search.png"):
        log(f"tune: search plot: {folder / 'search.png'}")
    return result
