"""Spark daemons as separate processes for the tests: a standalone master with workers, and a
Spark Connect server, started from the pyspark distribution's scripts, bound to 127.0.0.1, with
logs and work folders under the test's temporary folder, and stopped by their process ids."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Daemons:
    """Processes started here, each its own session leader, so a stop reaches the JVM and any
    executors it forked. Stopped at the end of the fixture, and at interpreter exit if that fails."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.processes: list[subprocess.Popen] = []
        atexit.register(self.stop)
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            # A terminated test run (a CI timeout) exits through atexit instead of leaving JVMs behind.
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    def env(self) -> dict[str, str]:
        return {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": "127.0.0.1",
                "SPARK_LOG_DIR": str(self.folder / "logs"), "SPARK_PID_DIR": str(self.folder / "pids"),
                # Executors and the Python workers run this interpreter (the venv with churnlens).
                "PYSPARK_PYTHON": sys.executable}

    def start(self, name: str, *command: str) -> subprocess.Popen:
        (self.folder / "logs").mkdir(parents=True, exist_ok=True)
        log = (self.folder / "logs" / f"{name}.log").open("wb")
        process = subprocess.Popen(command, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.folder)
        self.processes.append(process)
        return process

    def log(self, name: str) -> str:
        path = self.folder / "logs" / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        while self.processes:
            process = self.processes.pop()
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # executors a worker forked, if any remain
            process.wait()


def wait_until(ready, what: str, daemons: Daemons, name: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if any(p.poll() is not None for p in daemons.processes):
            break
        time.sleep(1)
    raise RuntimeError(f"{what} did not come up:\n{daemons.log(name)}")


def standalone_cluster(daemons: Daemons, workers: int = 2, cores: int = 1, memory: str = "1g") -> str:
    """A standalone master and ``workers`` workers; returns the master URL once all registered."""
    spark_class = str(spark_home() / "bin" / "spark-class")
    port, ui = free_port(), free_port()
    daemons.start("master", spark_class, "org.apache.spark.deploy.master.Master",
                  "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui))
    url = f"spark://127.0.0.1:{port}"
    for index in range(workers):
        work = daemons.folder / f"work-{index}"
        work.mkdir(parents=True, exist_ok=True)
        daemons.start(f"worker-{index}", spark_class, "org.apache.spark.deploy.worker.Worker",
                      "--host", "127.0.0.1", "--webui-port", str(free_port()), "--cores", str(cores),
                      "--memory", memory, "--work-dir", str(work), url)

    def all_alive() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=5) as response:
                return json.load(response).get("aliveworkers", 0) == workers
        except OSError:
            return False

    wait_until(all_alive, f"the standalone cluster at {url}", daemons, "master")
    return url


def connect_server(daemons: Daemons, master: str = "local[2]") -> str:
    """A Spark Connect server (the jar ships in the pyspark wheel); returns its ``sc://`` URL."""
    port = free_port()
    daemons.start("connect", str(spark_home() / "bin" / "spark-submit"),
                  "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
                  "--name", "churnlens-connect-test", "--master", master,
                  "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
                  "--conf", f"spark.connect.grpc.binding.port={port}",
                  "--conf", "spark.driver.memory=2g", "--conf", "spark.ui.enabled=false",
                  "--conf", "spark.buffer.pageSize=2m", "--conf", "spark.sql.shuffle.partitions=4",
                  "--conf", f"spark.local.dir={daemons.folder / 'local'}")

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, f"the Spark Connect server on port {port}", daemons, "connect")
    return f"sc://127.0.0.1:{port}"
