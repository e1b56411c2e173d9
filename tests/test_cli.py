"""The command line (SPEC section 6): bad flags are usage errors at start, and `replay` reports
files it cannot use in one line (`serve` and `check-config` themselves are driven in
test_snapshot_restore, test_crash and test_config)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from tests.conftest import base_config, item, order


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
    assert "skipped 2 lines that are not decision-log entries" in capsys.readouterr().out
    assert main(["replay", "--json", "--config", str(new_config), str(log)]) == 0
    assert json.loads(capsys.readouterr().out)["skipped_lines"] == 2


def test_replay_prints_a_readable_report_and_json_on_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = base_config()
    config["skus"][0]["limits"] = {"user": 1}
    new = tmp_path / "new.json"
    new.write_text(json.dumps(config))
    was_refused = {"kind": "check", "now": 1_800_000_000, "order_id": "o1", "user_id": "u1", "decision": "deny",
                   "reasons": [{"code": "SKU_LIMIT", "sku_id": "S1"}], "request": order(order_id="o1")}
    was_allowed = {"kind": "check", "now": 1_800_000_000, "order_id": "o2", "user_id": "u2", "decision": "allow",
                   "reasons": [], "request": order(item("S1", 2), order_id="o2", user="u2")}
    log = tmp_path / "decisions.jsonl"
    log.write_text(f"{json.dumps(was_refused)}\n{json.dumps(was_allowed)}\nnot json\n")
    assert main(["replay", "--config", str(new), str(log)]) == 0
    assert capsys.readouterr().out == (
        "replayed 2 checks and 0 claims: 0 unchanged\n"
        "skipped 1 lines that are not decision-log entries\n"
        "  deny->allow: 1\n"
        "  allow->deny: 1\n"
        "newly refused, by reason:\n"
        "  SKU_LIMIT:S1: 1\n"
        "newly allowed, was refused for:\n"
        "  SKU_LIMIT:S1: 1\n"
        "examples:\n"
        "  order o1 (user u1): deny -> allow\n"
        "  order o2 (user u2): allow -> deny: SKU_LIMIT:S1\n"
    )
    assert main(["replay", "--json", "--config", str(new), str(log)]) == 0
    report = json.loads(capsys.readouterr().out)  # the whole output is one JSON document
    assert report["changed"] == {"deny->allow": 1, "allow->deny": 1} and report["skipped_lines"] == 1


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == "flashguard 0.1.0\n"


@pytest.mark.parametrize("command", ["serve", "check-config", "replay"])
def test_help_shows_the_default_of_every_option(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    entries: list[str] = []  # one per option, its help's continuation lines joined
    for line in out.split("options:", 1)[1].splitlines():
        if line.startswith("  -"):
            entries.append(line)
        elif entries:
            entries[-1] += line
    for entry in entries:
        if not entry.lstrip().startswith("-h") and "required" not in entry:
            assert "(default: " in entry, entry
    if command == "serve":
        assert "(default: 127.0.0.1)" in out and "(default: 8080)" in out
