"""What the Vitis AI docker needs of the project: Python 3.8 syntax, and
requirements that its torch, numpy and protobuf already satisfy."""
import glob
import os
import subprocess
import sys

import pytest

from conftest import REPO

DOCKER = {"torch": "1.13.1", "numpy": "1.22.4", "protobuf": "3.20.3"}


def project_python_files():
    files = glob.glob(os.path.join(REPO, "*.py")) + glob.glob(os.path.join(REPO, "vaiq", "*.py")) + \
        glob.glob(os.path.join(REPO, "tests", "*.py"))
    assert len(files) > 20
    return sorted(files)


def test_every_python_file_runs_on_python_3_8():
    vermin = os.path.join(os.path.dirname(sys.executable), "vermin")
    result = subprocess.run([vermin, "--target=3.8-", "--no-tips", "--violations", "--eval-annotations",
                             "--no-parse-comments"] + project_python_files(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert result.returncode == 0, result.stdout


def test_vermin_catches_newer_syntax(tmp_path):
    """The check above can fail: a walrus and a match statement are refused."""
    newer = tmp_path / "newer.py"
    newer.write_text("if (n := 3):\n    pass\nmatch n:\n    case 3:\n        pass\n")
    vermin = os.path.join(os.path.dirname(sys.executable), "vermin")
    result = subprocess.run([vermin, "--target=3.8-", "--no-tips", "--violations", str(newer)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert result.returncode != 0


def requirements():
    with open(os.path.join(REPO, "requirements.txt")) as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


@pytest.mark.parametrize("package", sorted(DOCKER))
def test_requirements_accept_the_docker_versions(package):
    from packaging.requirements import Requirement
    found = [Requirement(line) for line in requirements() if Requirement(line).name == package]
    assert found, "{} is not in requirements.txt".format(package)
    assert found[0].specifier.contains(DOCKER[package]), "{} would be replaced in the docker".format(found[0])
