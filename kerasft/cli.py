"""Step 10: the ``kerasft`` command line (Click).

Bad input (config, data, preset, export target) prints one line on stderr and exits with code 2,
without a traceback; ``--debug`` shows it. TensorFlow is imported only by the commands that need it.
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

from kerasft import __version__
from kerasft.errors import KerasftError

EXIT_BAD_INPUT = 2


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def _handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turns KerasftError into one line on stderr and exit code 2 (traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except KerasftError as e:
            if debug:
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kerasft")
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
def main(debug: bool) -> None:
    """Fine-tune Keras applications and KerasHub BERT in stages; export for TF Serving."""
    _quiet_tensorflow()


set_option = click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE",
    help="Override a config key (YAML value), e.g. --set stages.0.epochs=3. Repeatable.",
)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@set_option
@click.option("--output-dir", type=click.Path(file_okay=False), default=None,
              help="Parent folder of the run folder (default: the config's output_dir).")
@click.option("--no-export", is_flag=True, help="Train and evaluate, but do not export.")
@_handle_errors
def train(config: str, sets: tuple[str, ...], output_dir: str | None, no_export: bool) -> None:
    """Train CONFIG's stages, print metrics, export a SavedModel."""
    from kerasft.api import build_finetuner
    from kerasft.config import load_config

    cfg = load_config(config, _parse_sets(sets))
    if output_dir:
        cfg.output_dir = output_dir
    ft = build_finetuner(cfg, log=click.echo)
    summary = ft.fit()
    if cfg.export.enabled and not no_export:
        path = ft.export()
        click.echo(f"SavedModel: {path}")
    click.echo(f"run folder: {summary['run_dir']}")


def _load_run(run_dir: str, weights: str) -> Any:
    from kerasft.api import FineTuner

    return FineTuner.from_run(run_dir, log=click.echo, weights=weights)


weights_option = click.option(
    "--weights", default="model.weights.h5", show_default=True,
    help="Weights file in the run folder (e.g. checkpoints/best.weights.h5).",
)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--split", type=click.Choice(["test", "validation"]), default=None,
              help="Split to score (default: test, else validation).")
@weights_option
@_handle_errors
def evaluate(run_dir: str, split: str | None, weights: str) -> None:
    """Score a trained run (RUN_DIR) on its data's test or validation split."""
    from kerasft.metrics import write_json

    ft = _load_run(run_dir, weights)
    report = ft.evaluate(split=split)
    write_json(report, Path(run_dir) / "metrics.json")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--dir", "export_dir", default=None, help="Export base folder (TF Serving layout).")
@click.option("--version", "version", default=None,
              help="Version number (default: the config's export.version, auto = next).")
@click.option("--no-verify", is_flag=True, help="Skip the fresh-process reload check.")
@weights_option
@_handle_errors
def export(run_dir: str, export_dir: str | None, version: str | None, no_verify: bool,
           weights: str) -> None:
    """Export a trained run (RUN_DIR) as a TF Serving SavedModel."""
    import json

    if version is not None and version != "auto" and not version.isdigit():
        raise click.BadParameter(f"expected a positive integer or auto. Received: {version}",
                                 param_hint="--version")
    ft = _load_run(run_dir, weights)
    metrics = Path(run_dir) / "metrics.json"
    if metrics.is_file():
        ft.metrics = json.loads(metrics.read_text(encoding="utf-8"))
    if not no_verify:
        ft.data = ft.load_data()
    path = ft.export(dir=export_dir, version=int(version) if version and version.isdigit()
                     else version, verify=not no_verify)
    click.echo(f"SavedModel: {path}")


@main.command()
@click.argument("export_dir", type=click.Path(file_okay=False))
@click.option("--text", "texts", multiple=True, help="A text to classify. Repeatable.")
@click.option("--image", "images", multiple=True, type=click.Path(dir_okay=False),
              help="An image file to classify. Repeatable.")
@click.option("--input", "input_csv", type=click.Path(dir_okay=False), default=None,
              help="A CSV of texts (column --column) or image paths.")
@click.option("--column", default="text", show_default=True, help="CSV column with the inputs.")
@click.option("--top", default=3, show_default=True, help="Probabilities shown per example.")
@_handle_errors
def predict(export_dir: str, texts: tuple[str, ...], images: tuple[str, ...],
            input_csv: str | None, column: str, top: int) -> None:
    """Classify with an exported SavedModel (EXPORT_DIR = .../<name>/<version>) alone."""
    from kerasft.predict import predict_with_saved_model

    inputs: list[str] = list(texts) or list(images)
    kind = "image" if images else "text"
    if input_csv:
        inputs += _read_column(input_csv, column)
        if inputs and Path(inputs[0]).suffix.lower() in (".jpg", ".jpeg", ".png", ".gif",
                                                         ".bmp"):
            kind = "image"
    if not inputs:
        raise click.UsageError("give --text, --image or --input")
    for line in predict_with_saved_model(export_dir, inputs, kind=kind, top=top):
        click.echo(line)


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
@click.option("--layers", "layers_of", default=None, metavar="NAME",
              help="List the layers of one backbone (what top_n and from_layer refer to).")
@click.option("--preset", default=None, help="BERT preset for --layers bert.")
@_handle_errors
def backbones(layers_of: str | None, preset: str | None) -> None:
    """List the registered backbones (or the layers of one)."""
    from kerasft.backbones import get_entry, list_backbones

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
