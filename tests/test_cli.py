"""The command line (SPEC section 6): bad flags are usage errors at start, and `replay` reports
files it cannot use in one line (`serve` and `check-config` themselves are driven in
test_snapshot_restore, test_crash and test_config)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from tests.conftest import base_config


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--port", "99999"], "--port: must be from 1 to 65535, not 99999"),
        (["--port", "0"], "--port: must be from 1 to 65535, not 0"),
        (["--port", "http"], "--port: 'http' is not a number"),
        (["--max-inflight", "0"], "--max-inflight: must be at least 1, not 0"),
        (["--snapshot-every", "-5"], "--snapshot-every: must be at least 0, not -5"),
        (["--snapshot-every", "nan"], "--snapshot-every: must be at least 0, not nan"),
        (["--snapshot-every", "inf"], "--snapshot-every: must be at least 0, not inf"),
    ],
)
def test_a_bad_serve_flag_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--data", str(tmp_path / "data"), *flags])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_reload_config_without_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Without --config the start-up configuration is the demo: reloading it would wipe the
    # operator's restored configuration, so the command line refuses before touching the data.
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--data", str(tmp_path / "data"), "--reload-config"])
    assert exit_.value.code == 2
    assert "--reload-config applies the --config file" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


@pytest.fixture
def new_config(tmp_path: Path) -> Path:
    path = tmp_path / "new.json"
    path.write_text(json.dumps(base_config()))
    return path


@pytest.mark.parametrize("name", ["missing.jsonl", "."])
def test_replay_of_a_file_it_cannot_read_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], new_config: Path, name: str
) -> None:
    assert main(["replay", "--config", str(new_config), str(tmp_path / name)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(str(tmp_path / name).rstrip("/.")), err


def test_replay_counts_lines_that_are_not_log_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], new_config: Path
) -> None:
    log = tmp_path / "notes.txt"
    log.write_text("not json\n[1, 2]\n\n")
    assert main(["replay", "--config", str(new_config), str(log)]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 lines that are not decision-log entries" in out
    assert json.loads(out.strip().splitlines()[-1])["skipped_lines"] == 2
