"""Two `resnetcls tune` workers share one study through a real PostgreSQL server, as workers on many machines
would (Optuna's RDB storage). The test starts its own server: initdb into a temporary folder and pg_ctl on a
free port on 127.0.0.1 (as the postgres user when run as root: PostgreSQL refuses root), connections over TCP
checked by password (SCRAM) for a role `tuner`, so the workers use a DSN with a password in it. `make test`
installs Debian's postgresql package where it can (Makefile: postgresql); without it this test skips and says
why."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from resnetcls.errors import UserError
from resnetcls.tune.study import connect

from ..conftest import ROOT, TINY


def pg_bin() -> Path:
    """The folder of initdb/pg_ctl, or skip with the reason."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb") or ""]
    if not found[-1]:
        pytest.skip(
            "PostgreSQL is not installed (no initdb; `make postgresql` installs it as root or with sudo)"
        )
    return Path(found[-1]).parent


def as_server_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the postgres user then."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser") is None or subprocess.run(["id", "postgres"], capture_output=True).returncode:
        pytest.skip("running as root without a postgres user (or runuser) to start PostgreSQL as")
    return ["runuser", "-u", "postgres", "--", *cmd]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PASSWORD = "S3cretPW-pg"


@pytest.fixture(scope="module")
def postgres_url():
    """postgresql+psycopg://tuner:PASSWORD@127.0.0.1:PORT/tune on a server of its own, up for the module."""
    bindir, port = pg_bin(), free_port()
    home = Path(tempfile.mkdtemp(prefix="resnetcls-pg-"))  # not under pytest's root-only tmp folders
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
    data, run = as_server_user, []
    subprocess.run(
        data(
            [
                str(bindir / "initdb"),
                "-D",
                str(home / "data"),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
            ]
        ),
        check=True,
        capture_output=True,
    )
    run = data(
        [
            str(bindir / "pg_ctl"),
            "-D",
            str(home / "data"),
            "-l",
            str(home / "log"),
            "-w",
            "-o",
            f"-p {port} -h 127.0.0.1 -k {home}",
        ]
    )
    subprocess.run(run + ["start"], check=True, capture_output=True)
    try:
        socket_dir = ["-h", str(home), "-p", str(port), "-U", "postgres"]  # trusted: the server's own socket
        subprocess.run(
            data([str(bindir / "psql"), *socket_dir, "-c", f"CREATE ROLE tuner LOGIN PASSWORD '{PASSWORD}'"]),
            check=True,
            capture_output=True,
        )
        subprocess.run(
            data([str(bindir / "createdb"), *socket_dir, "-O", "tuner", "tune"]),
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg://tuner:{PASSWORD}@127.0.0.1:{port}/tune"
    finally:
        subprocess.run(run + ["-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_two_workers_share_one_postgresql_study(postgres_url, tiny_data, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "resnetcls",
                "tune",
                str(tiny_data),
                "--out",
                str(tmp_path / f"machine{i}"),
                "--trials",
                "3",
                "--storage",
                postgres_url,
                "--study-name",
                "shared",
                "--pruner",
                "none",
                "--epochs",
                "1",
                *TINY,
                "--set",
                "log.tensorboard=false",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = [w.communicate(timeout=540) for w in workers]
    for w, (_, err) in zip(workers, results):
        assert w.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert 3 <= len(trials) <= 4  # the count is checked before each trial: two workers may overlap by one
    # One study, not two: had each worker its own, there would be 6 trials. Which worker trains how many
    # depends on how fast each starts (a tiny trial takes a fraction of a second), so only that every trial
    # came from one of them is asserted.
    assert {t.user_attrs["pid"] for t in trials} <= {w.pid for w in workers}
    for t in trials:  # each an ordinary run directory on the machine (here: folder) that trained it
        assert (Path(t.user_attrs["run_dir"]) / "best" / "model.json").is_file()
    for i in range(2):  # each worker's end: the study's report (and the best recipe where its run is)
        assert "shared" in (tmp_path / f"machine{i}" / "report.html").read_text()
    # The password is nowhere: not in any file of either output folder (study pages, trial runs, their
    # environment.json and checkpoints with the command line), not on stdout or stderr.
    leaks = [
        str(p) for p in sorted(tmp_path.rglob("*")) if p.is_file() and PASSWORD.encode() in p.read_bytes()
    ]
    assert leaks == [] and not any(PASSWORD in out + err for out, err in results)
    assert "tuner:***@127.0.0.1" in (tmp_path / "machine0" / "report.html").read_text()
    env = json.loads((Path(trials[0].user_attrs["run_dir"]) / "environment.json").read_text())
    assert "--storage 'postgresql+psycopg://tuner:***@127.0.0.1" in env["command"]


def test_the_password_may_come_from_pgpassword_and_a_refused_one_is_one_masked_line(
    postgres_url, monkeypatch
):
    """libpq's own sources of a password (PGPASSWORD here; ~/.pgpass alike) with a DSN that has none; a wrong
    password is refused by the server in one line that does not repeat it."""
    bare = postgres_url.replace(f":{PASSWORD}@", "@")
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    optuna.create_study(storage=connect(bare), study_name="from-env")
    monkeypatch.delenv("PGPASSWORD")
    with pytest.raises(UserError) as refused:
        connect(postgres_url.replace(PASSWORD, "Wr0ngPW-pg"))
    message = str(refused.value)
    assert "Wr0ngPW" not in message and PASSWORD not in message and "\n" not in message
    assert message.startswith("--storage postgresql+psycopg://tuner:***@127.0.0.1") and "tuner" in message
