"""The container image (no builder runs here): the Dockerfile's base image, Ray and Python agree with jobs/ and with
pyproject.toml, it installs only what pyproject.toml declares, and its .dockerignore keeps what the image needs."""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
BASE = re.compile(r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3\d+)-(?:gpu|cu\d+)$")


def _dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _base() -> re.Match[str]:
    (line,) = [ln for ln in _dockerfile() if ln.upper().startswith("FROM ")]
    match = BASE.match(line.split()[1])
    assert match, f"the base image is not one of Ray's GPU images: {line}"
    return match


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _images() -> list[str]:
    """Every container image that jobs/ names."""
    images = []
    for path in sorted((ROOT / "jobs").glob("*.yaml")):
        images += re.findall(r"^\s*(?:-\s*)?image:\s*(\S+)", path.read_text(), flags=re.M)
    return images


def test_base_image_ray_and_python_agree_with_jobs_and_pyproject() -> None:
    base = _base()
    ray_version, py = base["ray"], f"{base['py'][0]}.{base['py'][1:]}"
    job = yaml.safe_load((ROOT / "jobs" / "rayjob.yaml").read_text())
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == ray_version
    images = _images()
    assert len(images) >= 3, images  # the RayJob's head and workers, the cluster launcher's docker image
    for image in images:
        assert image.rsplit(":", 1)[1].endswith(f"-ray{ray_version}-py{base['py']}"), (
            f"{image} is not tagged with the Dockerfile's Ray {ray_version} and Python {py}"
        )
    project = _pyproject()["project"]
    assert SpecifierSet(project["requires-python"]).contains(py), f"Python {py} outside {project['requires-python']}"
    (ray,) = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "ray"]
    assert ray.specifier.contains(ray_version), f"the image's Ray {ray_version} is outside pyproject's {ray.specifier}"


def test_the_image_installs_only_what_pyproject_declares() -> None:
    extras = set(_pyproject()["project"].get("optional-dependencies", {}))
    installs = [ln for ln in _dockerfile() if ln.upper().startswith("RUN ") and "pip install" in ln]
    assert installs, "the Dockerfile installs nothing"
    for line in installs:
        for command in re.split(r"&&|;", line.removeprefix("RUN ")):
            words = shlex.split(command)
            if "pip" not in words or "install" not in words:
                continue
            args = words[words.index("install") + 1 :]
            targets = [a for a in args if not a.startswith("-")]
            options = [a for a in args if a.startswith("-")]
            assert set(options) <= {"--no-cache-dir", "-e", "--editable", "-q"}, f"unexpected pip options: {options}"
            for target in targets:
                match = re.fullmatch(r"(?P<path>\.|/home/ray/dvcm)(?:\[(?P<extras>[\w,-]+)\])?", target)
                assert match, f"the image installs {target!r}, which is not this project"
                assert set(filter(None, (match["extras"] or "").split(","))) <= extras
    copied = " ".join(ln for ln in _dockerfile() if ln.upper().startswith("COPY "))
    assert re.search(r"COPY (--chown=\S+ )?\. /home/ray/dvcm", copied), "the whole checkout is the build's source"


def test_dockerignore_keeps_what_the_image_needs() -> None:
    patterns = [
        p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(fnmatch.fnmatch(pre, pat) for pat in patterns for pre in prefixes)

    for path in (".venv/bin/python", ".git/HEAD", "dvcm/__pycache__/x.pyc"):
        assert ignored(path), path
    needed = ["pyproject.toml", "README.md", "jobs/paper_sweep.yaml", "jobs/runtime_env.yaml"]
    needed += [str(p.relative_to(ROOT)) for p in (ROOT / "dvcm" / "zoo").rglob("*") if p.is_file()]
    needed += [str(p.relative_to(ROOT)) for p in (ROOT / "pipeline").rglob("*.py")]
    needed += [str(p.relative_to(ROOT)) for p in (ROOT / "pipeline" / "evaluation").rglob("*.py")]
    assert not [p for p in needed if ignored(p) and "__pycache__" not in p]
