"""``kerasft train --dry-run``: what ``fit`` would do, without creating the strategy.

:func:`make_plan` counts workers, replicas, batches, steps per stage, the run folder and the
export path from the config, the environment (``TF_CONFIG``, TPU variables, local GPUs) and the
loaded data: no port is bound, no device is initialised, nothing is written. :func:`plan_lines`
is what the command prints.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kerasft.config import Config, check_strategy_options
from kerasft.export.saved_model import next_version
from kerasft.training.distribution import (
    check_replica_examples,
    distribution_notes,
    drops_remainder,
    sharding_policy,
    sharding_reason,
    steps_per_epoch,
)
from kerasft.training.precision import resolve as resolve_precision
from kerasft.training.run_folder import resolve_run_id
from kerasft.training.strategy import (
    StrategyInfo,
    check_global_batch,
    placement,
    select_strategy_kind,
)


def _count_local_gpus() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))  # does not initialise the runtime


def make_plan(cfg: Config, data: Any, *, env: Mapping[str, str] | None = None,
              run_id: str | None = None, output_dir: str | os.PathLike | None = None,
              strategy_info: StrategyInfo | None = None,
              count_gpus: Callable[[], int] = _count_local_gpus) -> dict[str, Any]:
    """What ``fit`` would do with `cfg` on `data` (a :class:`kerasft.data.splits.DataSplits`),
    without creating the strategy: no port is bound, no device is initialised, nothing is written.

    With `strategy_info` (an already created strategy) its real replica count is used; otherwise
    replicas are counted from the config and environment (TPU cores: unknown before connecting).
    """
    env = os.environ if env is None else env
    if strategy_info is not None:
        kind = strategy_info.kind
    else:
        kind = select_strategy_kind(cfg, env, count_gpus)
    check_strategy_options(cfg, kind)
    where = placement(kind, env)
    if strategy_info is not None:
        replicas: int | None = strategy_info.replicas
        strategy_name = type(strategy_info.strategy).__name__
    elif kind == "default":
        replicas, strategy_name = 1, "default strategy"
    elif kind == "mirrored":
        replicas = len(cfg.training.devices) if cfg.training.devices else max(1, count_gpus())
        strategy_name = "MirroredStrategy"
    elif kind == "multi_worker":
        replicas = where.workers * max(1, count_gpus())
        strategy_name = "MultiWorkerMirroredStrategy"
    else:
        replicas, strategy_name = None, "TPUStrategy"
    batch = cfg.data.batch_size
    drop = drops_remainder(kind)
    sizes = {"train": data.train.size,
             "validation": data.validation.size if data.validation is not None else 0,
             "test": data.test.size if data.test is not None else 0}
    if replicas is not None:
        check_global_batch(batch, replicas, kind)
        check_replica_examples(sizes["train"], replicas)
    steps = steps_per_epoch(sizes["train"], batch, drop, replicas or 1)
    lr_scale = (replicas or 0) if cfg.training.lr_scaling == "linear" else 1
    stages = [{"name": s.name, "epochs": s.epochs, "steps": s.epochs * steps,
               "learning_rate": s.learning_rate, "lora": s.lora,
               "effective_learning_rate": s.learning_rate * lr_scale
               if lr_scale and s.learning_rate != "auto" else None}
              for s in cfg.stages]
    run_id = resolve_run_id(run_id, env)
    base = Path(output_dir or cfg.output_dir)
    if run_id:
        run_dir = str(base / f"{cfg.name}-{run_id}")
    else:
        run_dir = str(base / f"{cfg.name}-<start time YYYYmmdd-HHMMSS>")
    export = None
    if cfg.export.enabled:
        model_dir = Path(cfg.export.dir) / cfg.name
        version = next_version(model_dir) if cfg.export.version == "auto" else cfg.export.version
        export = {"path": str(model_dir / str(version)), "version": version,
                  "exists": (model_dir / str(version)).exists()}
    precision = resolve_precision(cfg, kind)
    source = data.report.get("source", cfg.data.source)
    return {
        "strategy": kind,
        "strategy_class": strategy_name,
        "workers": where.workers,
        "task": where.task,
        "chief": where.is_chief,
        "replicas": replicas,
        "global_batch": batch,
        "per_replica_batch": batch / replicas if replicas else None,
        "drop_remainder": drop,
        "sharding": sharding_policy(kind),
        "sharding_reason": sharding_reason(source) if sharding_policy(kind) else None,
        "data": {"source": source, "task": data.task, "classes": len(data.class_names),
                 "regression": bool(getattr(data, "regression", False)), **sizes},
        "steps_per_epoch": steps,
        "validation_steps": math.ceil(sizes["validation"] / batch) if sizes["validation"] else 0,
        "stages": stages,
        "total_epochs": sum(s.epochs for s in cfg.stages),
        "total_steps": sum(s["steps"] for s in stages),
        "lr_scaling": cfg.training.lr_scaling,
        "run_dir": run_dir,
        "run_id": run_id,
        "export": export,
        "steps_per_execution": cfg.training.steps_per_execution,
        "mixed_precision": {"policy": precision.policy, "reason": precision.reason},
        "notes": distribution_notes(cfg, kind, data),
    }


def plan_lines(plan: Mapping[str, Any]) -> list[str]:
    """The plan as the lines ``kerasft train --dry-run`` prints."""
    replicas = plan["replicas"]
    per_replica = plan["per_replica_batch"]
    if replicas is None:
        rep_text, per_text = "unknown until the TPU is connected (8 on a v3-8)", "global / cores"
    else:
        rep_text = str(replicas)
        per_text = f"{per_replica:g}"
    d = plan["data"]
    lines = [
        f"strategy: {plan['strategy']} ({plan['strategy_class']})",
        f"workers: {plan['workers']} (this process: {plan['task']}"
        + (", chief" if plan["chief"] and plan["workers"] > 1 else "") + ")",
        f"replicas: {rep_text}",
        f"global batch: {plan['global_batch']}, per-replica batch: {per_text}"
        + (", last partial training batch dropped" if plan["drop_remainder"] else
           f", last partial training batch cut to a multiple of {replicas}"
           if replicas and replicas > 1 else ""),
        f"data: {d['source']} ({d['task']}, "
        + (f"{d['classes']} classes" if not d.get("regression") else "regression")
        + f"): train {d['train']}, "
        f"validation {d['validation']}, test {d['test']} examples",
    ]
    precision = plan["mixed_precision"]
    lines.append(f"mixed precision: {precision['policy']} ({precision['reason']})")
    lines.extend(plan["notes"])
    lines.append(f"steps per epoch: {plan['steps_per_epoch']} training, "
                 f"{plan['validation_steps']} validation")
    for s in plan["stages"]:
        lr = "lr auto (an LR sweep at the stage's start)" if s["learning_rate"] == "auto" \
            else f"lr {s['learning_rate']:g}"
        if plan["lr_scaling"] == "linear" and s["learning_rate"] != "auto":
            eff = s["effective_learning_rate"]
            lr += f" x replicas = {eff:g}" if eff is not None else " x replicas (linear)"
        lora = s.get("lora")
        lora_text = f", LoRA rank {lora['rank']} alpha {lora['alpha']:g}" if lora else ""
        lines.append(f"stage '{s['name']}': {s['epochs']} epochs x {plan['steps_per_epoch']} "
                     f"steps = {s['steps']} steps, {lr}{lora_text}")
    lines.append(f"total: {plan['total_epochs']} epochs, {plan['total_steps']} steps")
    if plan["workers"] > 1 and not plan["run_id"]:
        lines.append(f"run folder: {plan['run_dir']} (named by the chief, shared with all "
                     "workers; --run-id or KERASFT_RUN_ID fixes it)")
    else:
        lines.append(f"run folder: {plan['run_dir']}")
    export = plan["export"]
    if export is None:
        lines.append("export: disabled (export.enabled: false)")
    else:
        lines.append(f"export: {export['path']} (version {export['version']}"
                     + (", exists: the export would fail" if export["exists"] else "") + ")")
    if plan["workers"] > 1 and not plan["chief"]:
        lines.append("this worker writes its checkpoints, logs and export to temporary folders "
                     "that are removed at the end; only the chief writes the outputs above")
    return lines
