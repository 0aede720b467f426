"""A local MultiWorkerMirroredStrategy cluster: N worker processes on 127.0.0.1 ports.

Used by tests/test_multi_worker.py and bench/multi_worker.py. Each worker gets its own
``TF_CONFIG`` (task ``worker``, index i), ``TMPDIR`` (``<out>/tmp_<i>``, so the test can see
what a worker leaves behind) and log file (``<out>/log_<i>.txt``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PORT_TAKEN = ("address already in use", "failed to add port", "could not start grpc server")


@dataclass
class ClusterRun:
    returncodes: list[int | None]
    logs: list[str]
    out: Path
    seconds: float

    def tail(self, chars: int = 3000) -> str:
        return "\n".join(f"--- worker {i} (rc {rc}) ---\n{log[-chars:]}"
                         for i, (rc, log) in enumerate(zip(self.returncodes, self.logs)))


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def worker_env(out: Path, tf_config: dict | None, extra: dict[str, str] | None = None
               ) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env.pop("KERASFT_RUN_ID", None)
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        KERAS_HOME=str(out / "keras_home"),
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
    )
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    env.update(extra or {})
    return env


def run_cluster(out: Path, command: Callable[[int], Sequence[str]], workers: int = 2,
                timeout_s: float = 240.0, extra_env: dict[str, str] | None = None,
                retries: int = 1, kill_when: Callable[[], bool] | None = None) -> ClusterRun:
    """Runs `command(i)` for i in range(workers) as one cluster; retries with new ports when a
    port was taken between picking and binding. A survivor is killed 30 s after a peer fails
    (it would wait for the peer's collectives). With `kill_when`, every worker is killed
    (SIGKILL) as soon as it returns True: a cluster that loses all its machines at once."""
    for attempt in range(retries + 1):
        run = _run_once(out / f"attempt_{attempt}", command, workers, timeout_s, extra_env,
                        kill_when)
        if all(rc == 0 for rc in run.returncodes) or not any(
                m in log.lower() for m in PORT_TAKEN for log in run.logs):
            return run
    return run


def _run_once(out: Path, command: Callable[[int], Sequence[str]], workers: int,
              timeout_s: float, extra_env: dict[str, str] | None,
              kill_when: Callable[[], bool] | None = None) -> ClusterRun:
    out.mkdir(parents=True)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(workers)]}
    procs, logs = [], []
    start = time.monotonic()
    for index in range(workers):
        (out / f"tmp_{index}").mkdir()
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = worker_env(out, tf_config, {"TMPDIR": str(out / f"tmp_{index}"),
                                          **(extra_env or {})})
        log = open(out / f"log_{index}.txt", "w")  # closed below
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, *command(index)], env=env, stdout=log,
                                      stderr=subprocess.STDOUT, cwd=str(REPO)))
    deadline = start + timeout_s
    failed_at = None
    try:
        while any(p.poll() is None for p in procs):
            now = time.monotonic()
            if any(p.poll() not in (None, 0) for p in procs):
                failed_at = failed_at or now
            if now > deadline or (failed_at is not None and now - failed_at > 30):
                break
            if kill_when is not None and kill_when():
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for log in logs:
            log.close()
    seconds = time.monotonic() - start
    texts = [(out / f"log_{i}.txt").read_text(errors="replace") for i in range(workers)]
    return ClusterRun([p.returncode for p in procs], texts, out, seconds)
