"""The container image (Dockerfile, .dockerignore) against the tree and the Helm chart.

Docker does not run here, so this checks what can be checked without it: the Dockerfile's
stages and instructions, that the build context keeps every file the wheel build needs,
that stage 1's build is the one this tree defines (pyproject's PEP 517 back-end, --locked),
and — by building that wheel the same way (`pip wheel .`) and running its `serval` — that
the wheel has the entry point and every command line the chart gives the image.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.support import helm_chart as hc

ROOT = hc.ROOT
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each stage (from its FROM on)."""
    out: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def build_args() -> dict[str, str]:
    return dict(arg.split("=", 1) for word, arg in instructions() if word == "ARG")


def resolve(text: str) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: build_args()[m.group(1)], text)


def pyproject() -> dict[str, Any]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def test_two_stages_build_then_slim_python() -> None:
    build, final = stages()
    assert resolve(build[0][1]).startswith("rust:") and build[0][1].endswith(" AS build")
    base = resolve(final[0][1])
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base
    # The same Debian release in both stages: the extension runs against the glibc it linked.
    assert resolve(build[0][1]).split(" ")[0].rsplit("-", 1)[1] == base.rsplit("-", 1)[1]


def test_stage_one_builds_the_wheel_with_this_trees_build_backend() -> None:
    build, _ = stages()
    assert pyproject()["build-system"]["build-backend"] == "maturin"
    runs = [arg for word, arg in build if word == "RUN"]
    (wheel,) = [r for r in runs if " wheel " in r]
    argv = shlex.split(wheel)
    # pip wheel of the context root: pyproject.toml's build-system (maturin within its bounds),
    # never a separately pinned maturin that could drift from it.
    assert argv[0].endswith("/pip") and argv[1] == "wheel" and argv[-1] == "."
    assert "--no-deps" in argv and "--no-build-isolation" not in argv
    assert not any("maturin" in r for r in runs), "stage 1 must not install its own maturin"
    assert ("ENV", "MATURIN_PEP517_ARGS=--locked") in build
    assert ("COPY", ". .") in build


def test_final_stage_installs_that_wheel_and_runs_serval_unprivileged() -> None:
    _, final = stages()
    assert ("COPY", "--from=build /dist/ /tmp/dist/") in final
    (install,) = [arg for word, arg in final if word == "RUN" and "pip install" in arg]
    assert "/tmp/dist/serval-*.whl" in install
    (user,) = [arg for word, arg in final if word == "USER"]
    uid, _, gid = user.partition(":")
    defaults = hc.chart_values()["securityContext"]
    assert (int(uid), int(gid)) == (defaults["runAsUser"], defaults["runAsGroup"])
    assert ("ENTRYPOINT", '["serval"]') in final
    assert pyproject()["project"]["scripts"]["serval"] == "deploy.cli:main"
    assert (
        "ENV",
        "PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1",
    ) in final


def dockerignore_patterns() -> list[str]:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "the matcher below does not handle exceptions"
    return patterns


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule without exceptions: a path is left out when it, or a directory above it,
    matches a pattern (`*` within one name, `**` across directories; anchored at the root)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        regex = (
            re.escape(pattern.strip("/")).replace(r"\*\*", "\0").replace(r"\*", "[^/]*").replace("\0", ".*")
        )
        regex = regex.replace(r"\?", "[^/]")
        if any(re.fullmatch(regex.replace(".*/", "(.*/)?"), p) for p in prefixes):
            return True
    return False


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.split()


def test_build_context_keeps_what_the_wheel_build_needs() -> None:
    patterns = dockerignore_patterns()
    tool = pyproject()["tool"]["maturin"]
    packages = [*tool["python-packages"], tool["module-name"].split(".")[0]]
    needed = ["pyproject.toml", "README.md", "Cargo.toml", "Cargo.lock"] + [
        f for f in tracked_files() if f.split("/")[0] in packages
    ]
    assert len(needed) > 50
    dropped = [f for f in needed if ignored(f, patterns)]
    assert dropped == []
    for path in (".git/HEAD", ".venv/bin/python", "target/release/x", "hostagent/sal_core/_native.abi3.so"):
        assert ignored(path, patterns), path
    assert not ignored("hostagent/sal_core/tests/x.rs", patterns)  # Cargo.toml's test targets


# --- the wheel itself -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel stage 1 builds: `pip wheel --no-deps .` with MATURIN_PEP517_ARGS=--locked.
    Without build isolation (maturin from the dev extra, the same bounds as pyproject's
    build-system), reusing target/: seconds after `make dev`, minutes from a cold cache."""
    out = tmp_path_factory.mktemp("wheel")
    env = dict(os.environ, MATURIN_PEP517_ARGS="--locked")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--wheel-dir",
        str(out),
        ".",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = out.glob("serval-*.whl")
    return built


@pytest.mark.timeout(900)
def test_wheel_has_every_package_and_the_serval_entry_point(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "serval=deploy.cli:main" in entry_points.replace(" ", "")
    for module in (
        "deploy/cli.py",
        "registry/cli.py",
        "resolver/dns_bridge/cli.py",
        "hostagent/agent/cli.py",
        "dashboard/cli.py",
        "dashboard/templates/base.html",
    ):
        assert module in names, module
    assert any(n.startswith("hostagent/sal_core/_native") and n.endswith(".so") for n in names)
    assert not any(n.startswith("tests/") for n in names)


@pytest.mark.timeout(900)
def test_chart_command_lines_run_against_the_wheel(wheel: Path, tmp_path: Path) -> None:
    """Every Serval command line of the default and a full-options render, parsed by the
    `serval` parser of the unpacked wheel (not the source tree), which also loads the
    Rust extension the agent needs."""
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path / "site")
    argvs = []
    for values in (
        {},
        {
            "agent": {"zone": "a", "region": "r", "salAddresses": ["0.0.0.0", "::"]},
            "dns": {"forwarder": "10.0.0.53:53"},
            "dashboard": {"openReads": True, "auth": {"tokenFileSecret": "t"}},
        },
    ):
        objects = hc.render(values)
        for w in hc.workloads(objects):
            for c in hc.containers(w):
                if c["image"].startswith("serval:") and not c.get("command"):
                    argvs.append(hc.command_line(c, objects))
    assert len(argvs) >= 8
    script = (
        "import json, sys\n"
        "import deploy.cli, hostagent.sal_core._native\n"
        "assert deploy.cli.__file__.startswith(sys.argv[1]), deploy.cli.__file__\n"
        "parser = deploy.cli.build_parser()\n"
        "for argv in json.loads(sys.stdin.read()):\n"
        "    print(parser.parse_args(argv).command)\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r}); exec({script!r})",
            str(tmp_path / "site"),
        ],
        input=json.dumps(argvs),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(set(done.stdout.split())) == ["agent", "dashboard", "dns", "registry"]
