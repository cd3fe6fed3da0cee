from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from alpr.record import RecordOptions, record
from alpr.synth import SynthOptions, generate

ROOT = Path(__file__).parents[1]

MARIADB_URL = os.environ.get("ALPR_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
SMALL = SynthOptions(width=320, height=240, max_plates=3, empty_fraction=0.1)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small synthetic labelme folder, made once per test session; tests copy it before changing it."""
    out = tmp_path_factory.mktemp("synth") / "labelme"
    generate(out, 24, seed=7, options=SMALL, workers=2, progress=False)
    return out


@pytest.fixture
def labelme_copy(synth_dir, tmp_path) -> Path:
    target = tmp_path / "labelme"
    shutil.copytree(synth_dir, target)
    return target


@pytest.fixture
def unique_name() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def mariadb_available() -> bool:
    from sqlalchemy.engine import make_url

    url = make_url(MARIADB_URL)
    try:
        with socket.create_connection((url.host or "127.0.0.1", url.port or 3306), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(params=["sqlite", "mariadb"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'alpr.db'}"
    if not mariadb_available():  # a failure, not a skip: the database tests are what CI runs them for
        pytest.fail(f"no MariaDB at {MARIADB_URL} (set ALPR_TEST_MYSQL_URL to use another)")
    return MARIADB_URL


def interruptible() -> None:
    """A Popen preexec_fn: SIGINT and SIGHUP back to their defaults. Under a shell's background job (CI,
    nohup ... &) the tests start with SIGINT (and under nohup SIGHUP) ignored, which their children
    inherit; Python would then never raise KeyboardInterrupt. Started so, a process takes Ctrl-C and a
    closed terminal as from a terminal."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_emulator():
    """gcp-storage-emulator on 127.0.0.1, in memory; yields its host URL."""
    port = free_port()
    exe = Path(sys.executable).with_name("gcp-storage-emulator")
    process = subprocess.Popen([str(exe), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory",
                                "--default-bucket", "alpr-test"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("gcp-storage-emulator did not start")
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(10)


# Four iterations of the smoke model on the synthetic folder: a real checkpoint in about half a minute.
SMOKE_TRAIN = ["--dataset", "smoke", "--version", "1", "--model", "smoke", "--run-id", "r1", "--iters", "4",
               "--val-interval", "2", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--img-size", "256",
               "--log-interval", "1", "--warmup-iters", "2"]


def run_step_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, f"steps/{name}.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="session")
def smoke_workdir(synth_dir, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("model") / "work"
    record(RecordOptions(synth_dir, work, "smoke", "1", fractions=(0.5, 0.25, 0.25), dvc=False))
    return work


@pytest.fixture(scope="session")
def smoke_training(smoke_workdir) -> subprocess.CompletedProcess:
    """Trains run r1; its checkpoints are under smoke_workdir/runs/r1/train."""
    result = run_step_script("train", "--workdir", str(smoke_workdir), *SMOKE_TRAIN)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result
