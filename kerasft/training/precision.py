"""``training.mixed_precision: auto``: the hardware's fastest precision, where quality holds.

``auto`` is resolved once, at the start of a run (``FineTuner._prepare_runtime``; ``kerasft train
--dry-run`` shows the same choice without creating anything), in two steps:

1. :func:`hardware_policy` turns what :func:`probe_hardware` found into a candidate: TPUs, GPUs of
   compute capability 8.0 or more and CPUs whose flags include ``avx512_bf16`` or ``amx_bf16``
   compute bfloat16 natively (``mixed_bfloat16``); GPUs of 7.x have float16 tensor cores only
   (``mixed_float16``, which Keras trains with a ``LossScaleOptimizer``); anything else, or
   hardware that cannot be identified, stays float32 (``none``).
2. :data:`VERIFIED` keeps the candidate only for a backbone whose quality under that policy was
   measured equal to float32 (within 0.01 macro-F1, ``bench/precision.py``); otherwise float32.

The chosen policy replaces ``auto`` in the run's config, and ``training.mixed_precision_reason``
records why (``auto: ...``), so the run folder's ``config.yaml`` says what ran. Resuming a run
with ``auto`` keeps the run's recorded policy, saying so when this machine would choose another.

This module imports TensorFlow only inside :func:`probe_hardware`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kerasft.errors import ConfigError, expected

# Backbone (registry name) -> the policies measured at equal quality, each with its evidence.
# Quality depends on the number format and the model, not on the chip that computes it, so one
# measured row covers every hardware that the hardware rule sends to that policy. Add a row only
# with a row of docs/BENCHMARKS.md ("Precision") that shows it: float32 against the policy, same
# seed and data, macro-F1 within QUALITY_TOLERANCE.
VERIFIED: dict[str, dict[str, str]] = {
    "bert": {"mixed_bfloat16": "docs/BENCHMARKS.md, Precision, quickstart (MiniLM-L6)"},
}
QUALITY_TOLERANCE = 0.01
BENCHMARKS_SECTION = "docs/BENCHMARKS.md, Precision"

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# A test hook, like KERASFT_TEST_PAUSE: pins what probe_hardware reports, for this process and
# for the subprocesses it starts ("cpu", "cpu:<flag>,<flag>", "cpu:unknown", "gpu:<major>.<minor>",
# "tpu").
HARDWARE_ENV = "KERASFT_TEST_HARDWARE"


@dataclass(frozen=True)
class Hardware:
    """What ``auto`` looks at: the accelerator kind, the lowest GPU compute capability, the CPU's
    bfloat16 flags (None: unknown, e.g. not Linux)."""

    kind: str  # "tpu" | "gpu" | "cpu"
    compute_capability: tuple[int, int] | None = None
    cpu_flags: frozenset[str] | None = None

    def describe(self) -> str:
        if self.kind == "tpu":
            return "TPU"
        if self.kind == "gpu":
            cc = self.compute_capability
            return f"GPU compute capability {cc[0]}.{cc[1]}" if cc else \
                "GPU of unknown compute capability"
        if self.cpu_flags is None:
            return f"CPU flags unknown on {sys.platform}"
        found = [f for f in BF16_CPU_FLAGS if f in self.cpu_flags]
        return (f"CPU flags include {' and '.join(found)}" if found else
                f"CPU without {'/'.join(BF16_CPU_FLAGS)}")


@dataclass(frozen=True)
class Precision:
    """A resolved policy: ``policy`` is never ``auto``; ``note`` is a line for the log (resume on
    a machine where ``auto`` would choose differently)."""

    policy: str
    reason: str
    auto: bool
    note: str | None = None

    @property
    def keras_policy(self) -> str:
        return "float32" if self.policy == "none" else self.policy

    def line(self) -> str:
        return f"mixed precision: {self.policy} ({self.reason})"


def _parse_pinned(text: str) -> Hardware:
    kind, _, arg = text.strip().partition(":")
    if kind == "tpu" and not arg:
        return Hardware("tpu")
    if kind == "cpu":
        if arg == "unknown":
            return Hardware("cpu")
        return Hardware("cpu", cpu_flags=frozenset(f for f in arg.split(",") if f))
    if kind == "gpu":
        major, _, minor = arg.partition(".")
        if major.isdigit() and minor.isdigit():
            return Hardware("gpu", compute_capability=(int(major), int(minor)))
    raise ConfigError(expected("cpu, cpu:<flag>,..., cpu:unknown, gpu:<major>.<minor> or tpu",
                               HARDWARE_ENV, text))


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU's feature flags from Linux's ``/proc/cpuinfo``; None where they cannot be read."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 / ARM spelling
            return frozenset(value.split())
    return None


def probe_hardware(strategy_kind: str, devices: list[str] | None = None) -> Hardware:
    """The hardware a run of strategy `strategy_kind` computes on (tests pin this function or
    ``KERASFT_TEST_HARDWARE``). Creates no device: physical devices only."""
    pinned = os.environ.get(HARDWARE_ENV)
    if pinned:
        return _parse_pinned(pinned)
    if strategy_kind == "tpu":
        return Hardware("tpu")
    on_cpus = bool(devices) and all("cpu" in d.lower() for d in devices or ())
    if not on_cpus:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            capabilities = []
            for gpu in gpus:
                cc = tf.config.experimental.get_device_details(gpu).get("compute_capability")
                capabilities.append(tuple(cc) if cc else (0, 0))
            lowest = min(capabilities)  # every replica must run the policy fast
            return Hardware("gpu", compute_capability=lowest if lowest != (0, 0) else None)
    return Hardware("cpu", cpu_flags=cpu_flags())


def hardware_policy(hw: Hardware) -> tuple[str, str]:
    """The fastest policy `hw` runs natively, and why (before the quality table)."""
    if hw.kind == "tpu":
        return "mixed_bfloat16", hw.describe()
    if hw.kind == "gpu":
        cc = hw.compute_capability
        if cc is not None and cc >= (8, 0):
            return "mixed_bfloat16", hw.describe()
        if cc is not None and cc >= (7, 0):
            return "mixed_float16", hw.describe() + " (float16 tensor cores, no bfloat16)"
        return "none", hw.describe() + " (no float16 or bfloat16 tensor cores)"
    if hw.cpu_flags is not None and any(f in hw.cpu_flags for f in BF16_CPU_FLAGS):
        return "mixed_bfloat16", hw.describe()
    return "none", hw.describe()


def choose(hw: Hardware, backbone: str) -> Precision:
    """What ``auto`` picks on `hw` for `backbone` (a registry name)."""
    candidate, why = hardware_policy(hw)
    if candidate == "none":
        return Precision("none", f"auto: {why}: float32", auto=True)
    if candidate in VERIFIED.get(backbone.lower(), {}):
        return Precision(candidate, f"auto: {why}; {backbone} verified at equal quality "
                                    f"({BENCHMARKS_SECTION})", auto=True)
    return Precision("none", f"auto: {why}, but {candidate} is not verified for {backbone} "
                             f"({BENCHMARKS_SECTION}): float32", auto=True)


def resolve(cfg: Any, strategy_kind: str,
            recorded: tuple[str, str | None] | None = None) -> Precision:
    """The policy a run of `cfg` uses. `recorded`: the (policy, reason) of the run being resumed,
    which an ``auto`` config keeps."""
    t = cfg.training
    if t.mixed_precision != "auto":
        return Precision(t.mixed_precision, t.mixed_precision_reason or
                         "training.mixed_precision set in the config", auto=False)
    here = choose(probe_hardware(strategy_kind, t.devices), _family(cfg.backbone))
    if recorded is None:
        return here
    policy, reason = recorded
    note = None
    if policy != here.policy:
        note = (f"mixed precision: resuming with the run's recorded {policy}; auto would choose "
                f"{here.policy} on this machine ({here.reason})")
    return Precision(policy, reason or "the resumed run's recorded policy", auto=True, note=note)


def _family(backbone: Any) -> str:
    """The registry name :data:`VERIFIED` knows: ``auto`` (a text preset whose family KerasHub's
    files name) resolves to that family, as the build does."""
    if backbone.name.lower() != "auto" or not backbone.preset:
        return backbone.name
    from kerasft.models.keras_hub import describe_preset

    return describe_preset(backbone.preset, "auto")["family"]

