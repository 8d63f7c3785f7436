"""The production image (Dockerfile): checked without a Docker engine by reading the Dockerfile and running its
entrypoint here, and built and run where an engine answers."""

import fnmatch
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
BASE_IMAGE = "python:3.11-slim"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines
            if line and not line.startswith("#")]


def _arguments(instruction: str) -> list[list[str]]:
    found = []
    for name, arguments in _instructions():
        if name == instruction:
            found.append(json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments))
    return found


def _env() -> dict[str, str]:
    env = {}
    for words in _arguments("ENV"):
        env |= dict(word.split("=", 1) for word in words)
    return env


def _expand(path: str) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda match: _env()[match.group(1)], path)


def _copies() -> list[tuple[dict[str, str], list[str], str]]:
    """(flags, sources, destination) of every COPY."""
    copies = []
    for words in _arguments("COPY"):
        flags = dict(word[2:].split("=", 1) for word in words if word.startswith("--"))
        paths = [word for word in words if not word.startswith("--")]
        copies.append((flags, paths[:-1], _expand(paths[-1])))
    return copies


def _ignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative to the repository) out of the build context."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "exceptions need a fuller matcher than this one"
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(prefix, pattern) or fnmatch.fnmatchcase(prefix, pattern.removeprefix("**/"))
               for pattern in patterns for prefix in prefixes)


def _context_files(source: str) -> list[str]:
    path = ROOT / source
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return [str(p.relative_to(ROOT)) for p in files]


# Without an engine -------------------------------------------------------------------------------


def test_every_copy_source_is_in_the_build_context() -> None:
    copies = [(sources, destination) for flags, sources, destination in _copies() if "from" not in flags]
    assert len(copies) >= 5
    for sources, _ in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
            files = _context_files(source)
            assert files and not [f for f in files if _ignored(f)], f"COPY {source}: .dockerignore leaves it out"
    assert _ignored(".venv/bin/python") and _ignored("shopify_pipeline/__pycache__/cli.cpython-311.pyc")


def test_the_image_is_python_3_11_slim_like_the_tested_environment() -> None:
    assert [words[0] for words in _arguments("FROM")] == [BASE_IMAGE, BASE_IMAGE]
    assert sys.version_info[:2] == (3, 11), "deploy/requirements.txt pins what this interpreter installed"


def test_the_image_installs_exactly_the_tested_versions() -> None:
    spec = importlib.util.spec_from_file_location("pin_requirements", ROOT / "deploy" / "pin_requirements.py")
    pin_requirements = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pin_requirements)
    assert (ROOT / "deploy" / "requirements.txt").read_text() == pin_requirements.requirements_text(), (
        "deploy/requirements.txt is stale: .venv/bin/python deploy/pin_requirements.py > deploy/requirements.txt")
    pinned = {line for line in (ROOT / "deploy" / "requirements.txt").read_text().splitlines()}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for dependency in pyproject["project"]["dependencies"]:
        if "==" in dependency:
            assert dependency.lower() in pinned, f"{dependency} is not what the image installs"
    runs = " ".join(" ".join(words) for words in _arguments("RUN"))
    assert "pip install --no-deps -r /tmp/requirements.txt" in runs and "pip check" in runs


def test_the_image_runs_as_a_non_root_user() -> None:
    names = [name for name, _ in _instructions()]
    users = _arguments("USER")
    assert users and users[-1][0] not in ("root", "0")
    assert names.index("USER") > max(i for i, name in enumerate(names) if name == "RUN"), "RUN after USER"


def test_dagster_home_holds_the_production_instance_and_the_workspace() -> None:
    home = _env()["DAGSTER_HOME"]
    destinations = {tuple(sources): destination for flags, sources, destination in _copies() if "from" not in flags}
    assert destinations[("deploy/dagster.yaml",)] == f"{home}/dagster.yaml"
    workdir = _arguments("WORKDIR")[-1][0]
    assert destinations[("workspace.yaml",)].rstrip("/") in (".", workdir)
    (location,) = yaml.safe_load((ROOT / "workspace.yaml").read_text())["load_from"]
    module = location["python_module"]["module_name"]
    assert module == tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"]["module_name"]
    assert importlib.util.find_spec(module) is not None


def _entrypoint(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["sh", str(ENTRYPOINT), *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)


def test_the_entrypoint_starts_each_role() -> None:
    """`--help` after the role's own flags: Click refuses an unknown flag before it prints the help."""
    (entrypoint,) = _arguments("ENTRYPOINT")
    assert entrypoint[:2] == ["tini", "--"]
    script = [destination for flags, sources, destination in _copies() if sources == ["deploy/entrypoint.sh"]]
    assert script == [entrypoint[2]] or script == [f"/usr/local/bin/{entrypoint[2]}"]
    assert _arguments("CMD") == [["webserver"]]

    webserver = _entrypoint("webserver", "--help")
    assert webserver.returncode == 0 and "Usage: dagster-webserver" in webserver.stdout, webserver.stderr
    daemon = _entrypoint("daemon", "--help")
    assert daemon.returncode == 0 and "Usage: dagster-daemon run" in daemon.stdout, daemon.stderr
    # A run task: EcsRunLauncher overrides the command with `dagster api execute_run <run>` (the recorded
    # RunTask request in test_production_config.py) and the entrypoint runs it as given.
    worker = _entrypoint("dagster", "api", "execute_run", "--help")
    assert worker.returncode == 0 and "Usage: dagster api execute_run" in worker.stdout, worker.stderr
    assert _entrypoint().returncode == 2


# With an engine ----------------------------------------------------------------------------------


def _docker_engine() -> str | None:
    """None when a Docker engine answers, else why not."""
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"no docker client ({error})"
    return None if info.returncode == 0 else f"`docker info` failed: {info.stderr.strip().splitlines()[-1:]}"


@pytest.mark.timeout(1800)
def test_the_image_builds_and_runs_each_role() -> None:
    reason = _docker_engine()
    if reason:
        pytest.skip(f"no Docker engine answers, the image is not built here: {reason}")
    tag = f"shopify-pipeline-test:{uuid.uuid4().hex[:8]}"
    build = subprocess.run(["docker", "build", "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=1700)
    assert build.returncode == 0, build.stderr[-4000:]
    try:
        def run(*args: str) -> str:
            result = subprocess.run(["docker", "run", "--rm", tag, *args], capture_output=True, text=True,
                                    timeout=300)
            assert result.returncode == 0, result.stderr[-4000:]
            return result.stdout

        assert run("id", "-u").strip() != "0"
        assert "run_launcher" in run("sh", "-c", 'cat "$DAGSTER_HOME/dagster.yaml"')
        assert "Usage: dagster-webserver" in run("webserver", "--help")
        assert "Usage: dagster-daemon run" in run("daemon", "--help")
        assert "Usage: dagster api execute_run" in run("dagster", "api", "execute_run", "--help")
        run("python", "-c", "from shopify_pipeline.definitions import defs; defs.resolve_all_job_defs()")
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, timeout=120)
