"""Step 10: the ``kerasft`` command line (Click).

Bad input (config, data, preset, export target) prints one line on stderr and exits with code 2,
without a traceback; ``--debug`` shows it. TensorFlow is imported only by the commands that need it.

Why this module is long: it is every command's options and help text, which Click keeps beside
the command; each command's logic lives in the module it calls.
"""

from __future__ import annotations

import csv
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kerasft._version import __version__
from kerasft.errors import KerasftError

EXIT_BAD_INPUT = 2

# --debug may come before or after the subcommand; whichever sets it wins for this invocation.
_state = {"debug": False}


def _debug() -> bool:
    return _state["debug"]


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        _state["debug"] = True


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from kerasft.tf_logs import quiet_tensorflow_import

    quiet_tensorflow_import(_debug)


def _handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turns KerasftError into one line on stderr and exit code 2 (traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KerasftError as e:
            if _debug():
                raise
            click.echo(f"Error: {e}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)

    return wrapper


def _parse_sets(values: tuple[str, ...]) -> list[str]:
    from kerasft.config import parse_override

    for value in values:
        try:
            parse_override(value)
        except KerasftError as e:
            raise click.BadParameter(str(e), param_hint="--set") from None
    return list(values)


class _Group(click.Group):
    """Click's usage errors as one line too (Click prints usage, a hint and the error)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("standalone_mode", True) is False:
            return super().main(*args, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help() if e.ctx else str(e), err=True)
            sys.exit(EXIT_BAD_INPUT)
        except click.UsageError as e:
            hint = f" ('{e.ctx.command_path} --help' shows the usage)" if e.ctx else ""
            click.echo(f"Error: {e.format_message()}{hint}", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            click.echo(f"Error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


debug_option = click.option(
    "--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
    help="Show Python tracebacks and TensorFlow's start-up logs (also before the command).",
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kerasft")
@click.option("--debug", is_flag=True,
              help="Show Python tracebacks and TensorFlow's start-up logs (also after the "
                   "command).")
def main(debug: bool) -> None:
    """Fine-tune Keras applications and KerasHub BERT in stages; export for TF Serving."""
    _state["debug"] = debug
    _quiet_tensorflow()


set_option = click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE",
    help="Override a config key (YAML value), e.g. --set stages.0.epochs=3. Repeatable.",
)


@main.command()
@debug_option
@click.argument("config", type=click.Path(dir_okay=False), required=False)
@set_option
@click.option("--output-dir", type=click.Path(file_okay=False), default=None,
              help="Parent folder of the run folder (default: the config's output_dir).")
@click.option("--no-export", is_flag=True, help="Train and evaluate, but do not export.")
@click.option("--run-id", default=None, metavar="ID",
              help="Name the run folder <name>-<ID> (default: $KERASFT_RUN_ID, else the start "
                   "time; multi-worker: the chief's). Must be the same on every worker.")
@click.option("--dry-run", is_flag=True,
              help="Print strategy, workers, replicas, batches, steps and output paths; no "
                   "training.")
@click.option("--resume", "resume", is_flag=False, flag_value="latest", default=None,
              metavar="[RUN_DIR]",
              help="Continue an interrupted run: RUN_DIR, or alone the newest "
                   "<output_dir>/<name>-<timestamp> of this config.")
@click.option("--force", is_flag=True,
              help="With --resume: continue even though the resolved config changed.")
@_handle_errors
def train(config: str, sets: tuple[str, ...], output_dir: str | None, no_export: bool,
          run_id: str | None, dry_run: bool, resume: str | None, force: bool) -> None:
    """Train CONFIG's stages, print metrics, export a SavedModel."""
    from kerasft.api import build_finetuner
    from kerasft.config import load_config
    from kerasft.validate import check_export_target

    config, resume = _config_and_resume(config, resume)
    cfg = load_config(config, _parse_sets(sets))
    if output_dir:
        cfg.output_dir = output_dir
    if dry_run:
        if no_export:
            cfg.export.enabled = False
        for line in build_finetuner(cfg, log=click.echo).plan(run_id=run_id)["lines"]:
            click.echo(line)
        return
    if force and not resume:
        raise click.UsageError("--force only applies with --resume")
    if cfg.export.enabled and not no_export:
        check_export_target(cfg)  # before training: a bad export target writes nothing
    ft = build_finetuner(cfg, log=click.echo)
    try:
        summary = ft.fit(run_id=run_id, force=force,
                         resume=False if resume is None else True if resume == "latest"
                         else resume)
    except KeyboardInterrupt:
        _report_interrupt(ft, config, sets)
        sys.exit(130)
    if cfg.export.enabled and not no_export:
        path = ft.export()
        click.echo(f"SavedModel: {path}")
    click.echo(f"run folder: {summary['run_dir']}")


@main.command("lr-find")
@debug_option
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--stage", "stage", type=int, default=None, metavar="N",
              help="Stage to sweep, numbered from 1 as the logs number stages (default: the "
                   "first with learning_rate: auto, else 1).")
@set_option
@click.option("--output-dir", type=click.Path(file_okay=False), default=None,
              help="Parent folder of the <name>-lr-find-<time> folder (default: output_dir).")
@_handle_errors
def lr_find(config: str, stage: int | None, sets: tuple[str, ...],
            output_dir: str | None) -> None:
    """Sweep the learning rate of one stage of CONFIG and suggest one (writes lr_find.png)."""
    from kerasft.api import build_finetuner
    from kerasft.config import load_config, refuse_token_task

    cfg = load_config(config, _parse_sets(sets))
    refuse_token_task(cfg)
    result = build_finetuner(cfg, log=click.echo).lr_find(stage=stage, output_dir=output_dir)
    click.echo(f"suggested learning_rate: {result['suggestion']:.3g} ({result['rule']})")
    click.echo(f"lr-find folder: {result['run_dir']}")


def _config_and_resume(config: str | None, resume: str | None) -> tuple[str, str | None]:
    """``train --resume CONFIG`` means CONFIG plus the newest run (Click gives --resume CONFIG's
    value, since --resume takes an optional RUN_DIR)."""
    if config is None:
        if resume not in (None, "latest") and Path(resume).suffix.lower() in (".yaml", ".yml") \
                and not Path(resume).is_dir():
            return resume, "latest"
        raise click.UsageError("Missing argument 'CONFIG': kerasft train CONFIG [--resume "
                               "[RUN_DIR]]")
    return config, resume


def _report_interrupt(ft: Any, config: str, sets: tuple[str, ...]) -> None:
    """Ctrl-C during `train`: says (on stderr and in train.log) how to continue the run."""
    import shlex

    from kerasft.training.checkpoints import CHECKPOINTS, STATE_FILE

    folder = getattr(ft, "_run_folder", None)
    run_dir = Path(folder.run_dir) if folder is not None else ft.run_dir
    if run_dir is None:
        click.echo("Interrupted before the run folder was created: nothing to resume.", err=True)
        return
    if (Path(run_dir) / CHECKPOINTS / STATE_FILE).is_file():
        command = ["kerasft", "train", config, *(f"--set={v}" for v in sets), "--resume",
                   str(run_dir)]
        line = f"Interrupted. Resume with: {shlex.join(command)}"
    else:
        line = (f"Interrupted. {run_dir} has no run state to resume from "
                "(training.checkpoint_every_epoch: false).")
    click.echo(line, err=True)
    log_path = getattr(ft.log, "path", None)
    if log_path is not None:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def _load_run(run_dir: str, weights: str) -> Any:
    from kerasft.api import FineTuner

    return FineTuner.from_run(run_dir, log=click.echo, weights=weights)


weights_option = click.option(
    "--weights", default="model.weights.h5", show_default=True,
    help="Weights file in the run folder (e.g. checkpoints/best.weights.h5).",
)


@main.command()
@debug_option
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--split", type=click.Choice(["test", "validation"]), default=None,
              help="Split to score (default: test, else validation).")
@weights_option
@_handle_errors
def evaluate(run_dir: str, split: str | None, weights: str) -> None:
    """Score a trained run (RUN_DIR) on its data's test or validation split."""
    _load_run(run_dir, weights).evaluate(split=split)  # writes the split's own metrics files


@main.command()
@debug_option
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--dir", "export_dir", default=None, help="Export base folder (TF Serving layout).")
@click.option("--version", "version", default=None,
              help="Version number (default: the config's export.version, auto = next).")
@click.option("--no-verify", is_flag=True, help="Skip the fresh-process reload check.")
@click.option("--format", "fmt", type=click.Choice(["savedmodel", "tflite"]),
              default="savedmodel", show_default=True,
              help="tflite: a .tflite file + tflite_report.json (into --dir, default "
                   "<export.dir>/<name>/tflite).")
@click.option("--quantize", type=click.Choice(["none", "float16", "dynamic", "int8"]),
              default=None,
              help="int8 means 8-bit integer weights in both formats. savedmodel: none or int8 "
                   "(Keras quantizes Dense, EinsumDense and Embedding weights, not "
                   "convolutions; default export.quantize). tflite: none (default), float16, "
                   "dynamic (int8 weights), int8 (weights and activations, calibrated on "
                   "training examples).")
@click.option("--precision", type=click.Choice(["float32", "bfloat16"]), default=None,
              help="savedmodel: the serving graph's compute precision (default "
                   "export.precision, float32). bfloat16 is faster for batches on hardware "
                   "with bfloat16 units and slower without them; answers move slightly.")
@click.option("--calibration-examples", type=click.IntRange(min=1), default=100,
              show_default=True, help="Training examples used to calibrate int8.")
@click.option("--saved-model", "saved_model", type=click.Path(file_okay=False), default=None,
              help="TFLite: compare against this SavedModel version folder (default: the float "
                   "Keras model, which it equals within 1e-5).")
@click.option("--allow-float-fallback", is_flag=True,
              help="int8: keep ops the converter cannot quantise in float.")
@weights_option
@_handle_errors
def export(run_dir: str, export_dir: str | None, version: str | None, no_verify: bool,
           fmt: str, quantize: str | None, precision: str | None, calibration_examples: int,
           saved_model: str | None, allow_float_fallback: bool, weights: str) -> None:
    """Export a trained run (RUN_DIR) as a TF Serving SavedModel (or a TFLite file)."""
    import json

    if version is not None and version != "auto" and not version.isdigit():
        raise click.BadParameter(f"expected a positive integer or auto. Received: {version}",
                                 param_hint="--version")
    if fmt == "tflite":
        if version is not None or no_verify or precision is not None:
            raise click.BadParameter("expected --version/--no-verify/--precision only with "
                                     "--format savedmodel. Received: --format=tflite",
                                     param_hint="--format")
        from kerasft.export.tflite import export_tflite

        ft = _load_run(run_dir, weights)
        ft.data = ft.load_data()
        entry = export_tflite(ft, export_dir, quantize or "none",
                              calibration_examples=calibration_examples,
                              saved_model=saved_model, allow_float_fallback=allow_float_fallback,
                              log=click.echo)
        click.echo(f"TFLite: {entry['path']}")
        return
    if saved_model is not None or allow_float_fallback:
        raise click.BadParameter("expected --saved-model/--allow-float-fallback only with "
                                 "--format tflite. Received: --format=savedmodel",
                                 param_hint="--format")
    if quantize is not None:
        from kerasft.config import check_export_quantize

        try:
            check_export_quantize(quantize, "--quantize")
        except KerasftError as e:
            raise click.BadParameter(str(e), param_hint="--quantize") from None
    if precision is not None and quantize not in (None, "none"):
        from kerasft.config import check_export_precision

        try:
            check_export_precision(precision, "--precision", quantize)
        except KerasftError as e:
            raise click.BadParameter(str(e), param_hint="--precision") from None
    ft = _load_run(run_dir, weights)
    metrics = Path(run_dir) / "metrics.json"
    if metrics.is_file():
        ft.metrics = json.loads(metrics.read_text(encoding="utf-8"))
    if not no_verify:
        ft.data = ft.load_data()
    path = ft.export(dir=export_dir, version=int(version) if version and version.isdigit()
                     else version, verify=not no_verify, quantize=quantize,
                     precision=precision)
    click.echo(f"SavedModel: {path}")


@main.command()
@debug_option
@click.argument("export_dir", type=click.Path(file_okay=False), required=False)
@click.option("--server", default=None, metavar="URL",
              help="Ask a TF Serving server instead (REST: http://host:8501; --grpc: host:8500).")
@click.option("--model", "model_name", default=None, help="Model name on the server.")
@click.option("--version", "model_version", type=click.IntRange(min=0), default=None,
              help="Model version on the server (default: the latest it serves).")
@click.option("--label", "version_label", default=None, help="Version label (e.g. stable).")
@click.option("--grpc", "use_grpc", is_flag=True, help="Use gRPC (PredictionService) not REST.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="Seconds to wait for the server.")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="REST: retries, 0.5 s x 2^attempt apart, on connection errors, 503 "
                   "(unavailable) and 429 (batch queue full). Never retried: 504 (the server's "
                   "deadline), other 4xx and 5xx answers, and --timeout.")
@click.option("--text", "texts", multiple=True, help="A text to classify. Repeatable.")
@click.option("--pair", "pairs", multiple=True, nargs=2, metavar="TEXT_A TEXT_B",
              help="A sentence pair to classify (a model trained with two data.text_column "
                   "columns). Repeatable.")
@click.option("--image", "images", multiple=True, type=click.Path(dir_okay=False),
              help="An image file to classify. Repeatable.")
@click.option("--input", "input_csv", type=click.Path(dir_okay=False), default=None,
              help="A CSV of texts (column --column) or image paths.")
@click.option("--column", default="text", show_default=True, help="CSV column with the inputs.")
@click.option("--top", default=3, show_default=True, help="Probabilities shown per example.")
@_handle_errors
def predict(export_dir: str | None, server: str | None, model_name: str | None,
            model_version: int | None, version_label: str | None, use_grpc: bool,
            timeout: float, retries: int, texts: tuple[str, ...],
            pairs: tuple[tuple[str, str], ...], images: tuple[str, ...],
            input_csv: str | None, column: str, top: int) -> None:
    """Classify with an exported SavedModel (EXPORT_DIR = .../<name>/<version>, or .../<name>
    for its newest version) alone, or with a TF Serving server (--server URL --model NAME)."""
    from kerasft.export.loading import predict_with_saved_model

    remote = (model_name, model_version, version_label, use_grpc)
    if server is None and any(v not in (None, False) for v in remote):
        raise click.BadParameter("expected --server with --model/--version/--label/--grpc. "
                                 "Received: --server=None", param_hint="--server")
    if server is not None:
        if export_dir is not None:
            raise click.BadParameter(f"expected EXPORT_DIR or --server, not both. Received: "
                                     f"EXPORT_DIR={export_dir}", param_hint="--server")
        if not model_name:
            raise click.BadParameter("expected the model name with --server. Received: "
                                     "--model=None", param_hint="--model")
        if model_version is not None and version_label is not None:
            raise click.BadParameter("expected --version or --label, not both. Received: "
                                     f"--label={version_label}", param_hint="--label")
    elif export_dir is None:
        raise click.UsageError("give EXPORT_DIR (a SavedModel version folder) or --server URL "
                               "--model NAME")
    if pairs and (texts or images or input_csv):
        raise click.UsageError("give --pair alone (not with --text, --image or --input)")
    inputs: list[Any] = list(texts) or list(images) or [tuple(p) for p in pairs]
    kind = "image" if images else "pair" if pairs else "text"
    if input_csv:
        inputs += _read_column(input_csv, column)
        if inputs and Path(inputs[0]).suffix.lower() in (".jpg", ".jpeg", ".png", ".gif",
                                                         ".bmp"):
            kind = "image"
    if not inputs:
        raise click.UsageError("give --text, --pair, --image or --input")
    if server is not None:
        from kerasft.serving.client import format_rows, predict_on_server

        rows = predict_on_server(server, model_name, inputs, kind, version=model_version,
                                 label=version_label, use_grpc=use_grpc, timeout=timeout,
                                 retries=retries)
        for line in format_rows(inputs, rows, top=top):
            click.echo(line)
        return
    from kerasft.export.loading import resolve_version_dir

    version_dir, picked = resolve_version_dir(export_dir)
    if picked is not None:
        click.echo(f"{export_dir}: using version {picked} (the newest, as TF Serving does)",
                   err=True)
    for line in predict_with_saved_model(version_dir, inputs, kind=kind, top=top):
        click.echo(line)


@main.command("serve-config")
@debug_option
@click.argument("models_config", type=click.Path(dir_okay=False))
@click.option("--name", required=True, help="Model name (the REST path /v1/models/NAME).")
@click.option("--base-path", required=True,
              help="The model folder (holding integer versions) as the server sees it: an "
                   "absolute path (e.g. /models/NAME in Docker) or a URI (gs://...).")
@click.option("--local-base-path", type=click.Path(file_okay=False), default=None,
              help="The same folder as seen here, when the server sees another path; versions "
                   "are checked here.")
@click.option("--policy", type=click.Choice(["latest", "specific", "all"]), default="latest",
              show_default=True, help="Which versions the server loads.")
@click.option("--num-versions", type=click.IntRange(min=1), default=None,
              help="policy latest: how many of the newest versions (default 1).")
@click.option("--versions", default=None, metavar="1,2",
              help="policy specific: the versions, comma-separated.")
@click.option("--label", "labels", multiple=True, metavar="NAME=VERSION",
              help="A version label, e.g. --label stable=1 --label canary=2. Repeatable. Start "
                   "the server with --allow_version_labels_for_unavailable_models=true; an "
                   "existing label moves only to a version the file already serves.")
@click.option("--no-check", is_flag=True,
              help="Do not check that the versions exist as SavedModel folders.")
@_handle_errors
def serve_config(models_config: str, name: str, base_path: str, local_base_path: str | None,
                 policy: str, num_versions: int | None, versions: str | None,
                 labels: tuple[str, ...], no_check: bool) -> None:
    """Add or update model NAME in TF Serving's MODELS_CONFIG (created if missing)."""
    from kerasft.serving.client import describe_models_config, parse_labels, parse_versions
    from kerasft.serving.models_config import update_models_config

    try:
        version_list = parse_versions(versions)
    except KerasftError as e:
        raise click.BadParameter(str(e), param_hint="--versions") from None
    try:
        label_map = parse_labels(labels)
    except KerasftError as e:
        raise click.BadParameter(str(e), param_hint="--label") from None
    if num_versions is not None and policy != "latest":
        raise click.BadParameter(f"expected --num-versions only with --policy latest. "
                                 f"Received: --policy={policy}", param_hint="--num-versions")
    path = update_models_config(models_config, name, base_path, policy=policy,  # type: ignore
                                num_versions=num_versions or 1, versions=version_list,
                                labels=label_map, local_base_path=local_base_path,
                                check_versions=not no_check)
    click.echo(f"{path}:")
    for line in describe_models_config(path):
        click.echo(f"  {line}")
    if label_map:
        from kerasft.serving.models_config import LABELS_FLAG

        click.echo(f"labels: start tensorflow_model_server with {LABELS_FLAG} (it checks labels "
                   "before it loads any version)")


def _read_column(path: str, column: str) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if column not in (reader.fieldnames or []):
                raise KerasftError(f"{path}: expected a column '{column}'. Received: columns="
                                   f"{reader.fieldnames}")
            return [row[column] for row in reader if row[column]]
    except OSError as e:
        raise KerasftError(f"{path}: expected a readable CSV file. Received: {e.strerror}"
                           ) from None


@main.command()
@debug_option
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", default="compare.png", show_default=True,
              type=click.Path(dir_okay=False),
              help="PNG with every run's loss and monitored metric per epoch.")
@_handle_errors
def compare(run_dirs: tuple[str, ...], out: str) -> None:
    """Compare run folders (RUN_DIRS, at least 2): differing config keys, metrics, curves."""
    from kerasft.evaluation.compare import compare_runs

    lines, plotted = compare_runs(run_dirs, out)
    for line in lines:
        click.echo(line)
    click.echo(f"training curves: {out}" if plotted else
               "training curves: not drawn (pip install kerasft[plots] for matplotlib)")


@main.command()
@debug_option
@click.argument("config", type=click.Path(dir_okay=False))
@set_option
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help="Total trials of the search (default: tune.trials); running the command "
                   "again continues the search up to this many.")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None,
              help="The search folder (default: tune.dir, else <output_dir>/<name>-tune).")
@_handle_errors
def tune(config: str, sets: tuple[str, ...], trials: int | None, directory: str | None) -> None:
    """Search CONFIG's tune.params with Optuna (pip install 'kerasft[tune]'); writes best.yaml."""
    from kerasft.search.tune import import_optuna, run_search

    import_optuna()  # before any TensorFlow import: the missing extra is one line
    try:
        run_search(config, _parse_sets(sets), trials=trials, directory=directory,
                   log=click.echo)
    except KeyboardInterrupt:
        click.echo("Interrupted. Run the same command again to continue the search (the "
                   "interrupted trial runs again with the same values).", err=True)
        sys.exit(130)


@main.command()
@debug_option
@click.argument("config", type=click.Path(dir_okay=False))
@set_option
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True,
              help="Number of stratified, seeded folds over train + validation.")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None,
              help="The cross-validation folder (default: <output_dir>/<name>-cv-<time>).")
@_handle_errors
def cv(config: str, sets: tuple[str, ...], folds: int, directory: str | None) -> None:
    """Cross-validate CONFIG: one run per fold, the test split scored by each; cv_summary.json."""
    from kerasft.search.cv import run_cv

    run_cv(config, _parse_sets(sets), folds=folds, directory=directory, log=click.echo)


@main.command()
@debug_option
@click.argument("config", type=click.Path(dir_okay=False))
@set_option
@_handle_errors
def validate(config: str, sets: tuple[str, ...]) -> None:
    """Check CONFIG fully (keys, types, files, preset, labels) without training."""
    from kerasft.validate import validate_config

    for line in validate_config(config, _parse_sets(sets)):
        click.echo(line)
    click.echo(f"{config}: OK")


@main.command()
@debug_option
@click.option("--layers", "layers_of", default=None, metavar="NAME",
              help="List the layers of one backbone (what top_n and from_layer refer to).")
@click.option("--preset", default=None,
              help="Preset of a text backbone for --layers (e.g. --layers roberta).")
@_handle_errors
def backbones(layers_of: str | None, preset: str | None) -> None:
    """List the registered backbones (or the layers of one)."""
    from kerasft.models.registry import get_entry, list_backbones

    if layers_of:
        from kerasft.validate import describe_layers

        get_entry(layers_of)
        for line in describe_layers(layers_of, preset):
            click.echo(line)
        return
    rows = list_backbones()
    click.echo(f"{'name':<20} {'task':<6} {'input':<10} {'parameters':>12}  source")
    for row in rows:
        params = f"{row['parameters']:,}" if row["parameters"] else "from preset"
        click.echo(f"{row['name']:<20} {row['task']:<6} {row['input']:<10} {params:>12}  "
                   f"{row['source']}")


if __name__ == "__main__":
    main()
