"""Starting and stopping `flashguard serve`: a start that cannot listen leaves the data directory
alone and says why in one line, a restart names the command that applies its --config, and the
final snapshot is written only when there is something new to write."""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from domain.clock import ManualClock
from node.coordinator import Coordinator
from domain.document import build_config
from snapshots import snapshot as snapshot_files
from snapshots.store import Store
from tests.conftest import base_config

_SCRIPT = Path(sys.executable).parent / "flashguard"
FLASHGUARD = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "gateway.cli"]


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
        return port


def refused(*flags: str) -> tuple[int, list[str]]:
    """Exit code and output lines of a `serve` expected to stop at start."""
    proc = subprocess.run([*FLASHGUARD, "serve", *flags], capture_output=True, text=True, timeout=60)
    return proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()


def run_and_stop(command: list[str]) -> str:
    """Output of a server started with `command`, stopped by SIGTERM once it listens."""
    lines = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "listening on" in line:
                proc.send_signal(signal.SIGTERM)
    assert proc.returncode == 0, "".join(lines)
    return "".join(lines)


def test_a_busy_port_is_one_line_and_leaves_the_data_directory_alone(tmp_path: Path) -> None:
    data = tmp_path / "d4"
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        code, lines = refused("--data", str(data), "--port", str(port))
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].endswith(f"port {port} is in use (pid {os.getpid()}); choose another with --port"), lines
    assert not data.exists()  # not seeded with the demo: a later --config still seeds it


def test_a_host_that_cannot_be_bound_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "keep").write_text("x")
    code, lines = refused("--data", str(data), "--host", "192.0.2.1", "--port", "8090")  # TEST-NET-1: never local
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].endswith("cannot listen on 192.0.2.1:8090: Cannot assign requested address"), lines
    assert [p.name for p in data.iterdir()] == ["keep"]


def test_a_restart_names_the_command_that_applies_its_config(tmp_path: Path) -> None:
    config = tmp_path / "new.json"
    config.write_text(json.dumps(base_config()))
    serve = ["serve", "--data", str(tmp_path / "data"), "--port", str(free_port())]
    assert "not applied" not in run_and_stop([*FLASHGUARD, *serve, "--config", str(config)])  # it seeds
    out = run_and_stop([*FLASHGUARD, *serve, "--config", str(config)])
    hint = [line for line in out.splitlines() if "not applied" in line]
    assert len(hint) == 1, out
    command = hint[0].split("; to apply it: ", 1)[1]
    assert command == shlex.join(["flashguard", *serve, "--config", str(config), "--reload-config"])
    # the command works as given
    assert "applied the --config file" in run_and_stop([*FLASHGUARD, *shlex.split(command)[1:]])


def test_a_restart_without_config_has_nothing_to_apply(tmp_path: Path) -> None:
    serve = [*FLASHGUARD, "serve", "--data", str(tmp_path / "data"), "--port", str(free_port())]
    run_and_stop(serve)
    out = run_and_stop(serve)
    assert "restored: snapshot snapshot-" in out
    assert "not applied" not in out and "reload-config" not in out


async def test_a_restart_that_changes_nothing_writes_no_final_snapshot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def restore() -> tuple[Coordinator, Store]:
        coordinator = Coordinator(build_config(base_config()), ManualClock(1_800_000_000))
        store = Store(tmp_path)
        store.restore(coordinator, coordinator.config)
        return coordinator, store

    coordinator, store = restore()
    with caplog.at_level(logging.INFO, logger="flashguard"):
        await store.close(coordinator)
    ((_, path),) = snapshot_files.snapshots(tmp_path)
    assert f"final snapshot {path.name} written" in caplog.text
    written = path.stat().st_mtime_ns
    caplog.clear()
    coordinator, store = restore()
    with caplog.at_level(logging.INFO, logger="flashguard"):
        await store.close(coordinator)
    assert "written" not in caplog.text
    assert f"final snapshot: nothing new to write ({path.name} holds the state)" in caplog.text
    assert store.stats.taken == 0 and path.stat().st_mtime_ns == written
