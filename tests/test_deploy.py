"""Deployment files: the Dockerfile and deploy/flashguard.service run a valid `flashguard serve`
(through the command line's own parser), copy files that exist and that .dockerignore keeps, and
say the same thing as each other's pieces (port, data directory, health check).

No Docker engine or running systemd is needed: the image is not built here. What the build does
is checked piece by piece (the wheel `pip install .` builds from exactly the COPYed files, the
health check's command against a live gateway), and the unit is given to `systemd-analyze verify`
when that is installed.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from argparse import Namespace
from pathlib import Path

import pytest

from gateway.cli import _parser
from tests.conftest import MakeGateway

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
UNIT = ROOT / "deploy" / "flashguard.service"


# --- Dockerfile --------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines inside a continuation too
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        name, _, args = whole.partition(" ")
        out.append((name.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continuation"
    return out


def only(found: list[tuple[str, str]], name: str) -> str:
    values = [args for instr, args in found if instr == name]
    assert len(values) == 1, (name, values)
    return values[0]


def exec_form(args: str) -> list[str]:
    """A JSON array: the exec form, so that the process gets docker stop's SIGTERM (a shell would)."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def serve_args(argv: list[str]) -> Namespace:
    """The command line run through flashguard's own parser: a bad flag fails here as it would at start."""
    assert Path(argv[0]).name == "flashguard", argv
    args = _parser().parse_args(argv[1:])
    assert args.command == "serve", argv
    return args


def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text(encoding="utf-8"))


def docker_command() -> list[str]:
    found = dockerfile()
    return exec_form(only(found, "ENTRYPOINT")) + exec_form(only(found, "CMD"))


def copied_sources() -> list[str]:
    sources: list[str] = []
    for instr, args in dockerfile():
        if instr in ("COPY", "ADD"):
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            assert len(words) >= 2, args
            sources.extend(words[:-1])
    return sources


def ignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    # The matcher below is Docker's without exceptions ("!"); none are used.
    assert not any(p.startswith("!") for p in patterns)
    return [p.rstrip("/") for p in patterns]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves `relative` (or a directory above it) out of the build context."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            return True
    return False


def test_the_image_runs_a_valid_serve_on_all_interfaces_with_data_in_the_volume() -> None:
    found = dockerfile()
    assert only(found, "FROM") == "python:3.11-slim"
    args = serve_args(docker_command())
    assert args.host == "0.0.0.0"
    assert args.data == Path("/data")
    assert args.config is None and not args.manual_clock and not args.reload_config
    assert only(found, "EXPOSE") == str(args.port)
    assert "/data" in only(found, "VOLUME").split()
    assert only(found, "USER") not in ("root", "0")
    assert only(found, "STOPSIGNAL") == "SIGTERM"
    install = [args for instr, args in found if instr == "RUN" and "pip install" in args]
    assert install and re.search(r"pip install \.(\s|$)", install[0]), install


def test_the_health_check_asks_healthz_on_the_served_port() -> None:
    port = serve_args(docker_command()).port
    health = only(dockerfile(), "HEALTHCHECK")
    options, _, command = health.partition(" CMD ")
    assert "--start-period=" in options, health
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(exec_form(command))


async def test_the_health_check_command_passes_on_a_live_gateway_and_fails_without_one(gw_factory: MakeGateway) -> None:
    gw = await gw_factory()
    port = gw.client.port
    assert port is not None
    argv = exec_form(only(dockerfile(), "HEALTHCHECK").partition(" CMD ")[2])
    assert argv[0] == "python"  # the image's interpreter; here, the test's
    served = serve_args(docker_command()).port
    live = [sys.executable, *(a.replace(f":{served}/", f":{port}/") for a in argv[1:])]
    # In a thread: the gateway answers on this test's event loop.
    done = await asyncio.to_thread(subprocess.run, live, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    await gw.client.close()
    done = await asyncio.to_thread(subprocess.run, live, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0


def test_copied_files_exist_and_are_in_the_build_context() -> None:
    patterns = ignore_patterns()
    sources = copied_sources()
    with open(ROOT / "pyproject.toml", "rb") as f:
        packages: list[str] = tomllib.load(f)["tool"]["setuptools"]["packages"]
    assert {"pyproject.toml", "README.md", *packages} <= set(sources), "pip install . needs the metadata and every package"
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source, patterns), f"{source} is COPYed but .dockerignore leaves it out"
        if (ROOT / source).is_dir():
            for path in (ROOT / source).rglob("*"):
                relative = path.relative_to(ROOT).as_posix()
                if path.is_file() and "__pycache__" not in path.parts:
                    assert not ignored(relative, patterns), f"{relative} is left out of the build context"
    # What must not reach the image: a data directory (the admin token is in it), the venv, git.
    for kept_out in ("data", "data/journal-0000000000000001.log", ".venv", ".git", "tests", "bench"):
        assert ignored(kept_out, patterns), kept_out


def test_pip_install_of_exactly_the_copied_files_builds_a_complete_package(tmp_path: Path) -> None:
    # What `RUN pip install .` gets: the COPYed files only. The wheel must carry the three packages
    # and their data (the demo configuration, the console, the compaction module that snapshots run).
    pytest.importorskip("setuptools")
    context = tmp_path / "src"
    context.mkdir()
    for source in copied_sources():
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / source, context / source)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "dist").glob("flashguard-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("gateway/cli.py", "gateway/demo.toml", "gateway/console/index.html", "actors/ledger.py", "snapshots/compact.py"):
        assert needed in names, needed
    assert any(n.endswith(".dist-info/entry_points.txt") for n in names)


# --- systemd unit ------------------------------------------------------------------------------


def unit() -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (a key may repeat); continuation lines joined."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole, pending = pending + stripped, ""
        if whole.startswith("[") and whole.endswith("]"):
            current = sections.setdefault(whole[1:-1], {})
            continue
        assert current is not None, whole
        name, sep, value = whole.partition("=")
        assert sep, whole
        current.setdefault(name.strip(), []).append(value.strip())
    return sections


def service(name: str) -> str:
    values = unit()["Service"].get(name, [])
    assert len(values) == 1, (name, values)
    return values[0]


def exec_start() -> list[str]:
    argv = shlex.split(service("ExecStart"))
    argv[0] = argv[0].lstrip("-@:+!")  # systemd's prefixes
    return argv


def seconds(value: str) -> float:
    """A systemd time span: '300', '5min', '2min 30s'."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "hr": 3600}
    total = 0.0
    for number, unit_name in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit_name]
    return total


def test_the_unit_runs_a_valid_serve_with_its_state_directory_as_data() -> None:
    argv = exec_start()
    assert argv[0].startswith("/"), "systemd wants an absolute path"
    args = serve_args(argv)
    state = Path("/var/lib") / service("StateDirectory")
    assert args.data == state
    assert Path(service("WorkingDirectory")) == state
    assert args.config is not None and args.config.is_absolute()
    assert not args.manual_clock and not args.reload_config


def test_the_unit_restarts_on_failure_and_stops_with_time_for_the_final_snapshot() -> None:
    sections = unit()
    assert service("Type") in ("simple", "exec", "notify")  # the server does not notify: simple
    assert service("User") not in ("root", "0")
    assert service("Restart") == "on-failure"
    assert service("KillSignal") == "SIGTERM"
    assert seconds(service("TimeoutStopSec")) >= 120
    assert int(service("LimitNOFILE")) >= 65536
    environment = service("EnvironmentFile")
    assert environment.startswith("/") and not environment.startswith("-"), "the token file is required"
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]
    example = ROOT / "deploy" / "flashguard.env.example"
    assert re.search(r"^FLASHGUARD_ADMIN_TOKEN=", example.read_text(encoding="utf-8"), re.M)


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart's program exists: point it at this environment's flashguard.
    here = Path(sys.executable).with_name("flashguard")
    if not here.exists():
        pytest.skip("no flashguard script beside the interpreter")
    text = UNIT.read_text(encoding="utf-8").replace(exec_start()[0], str(here))
    copy = tmp_path / UNIT.name
    copy.write_text(text, encoding="utf-8")
    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    about_the_unit = [line for line in (done.stdout + done.stderr).splitlines() if UNIT.name in line]
    assert not about_the_unit, about_the_unit
