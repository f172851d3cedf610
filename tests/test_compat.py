"""What the Vitis AI dockers need of the project: Python 3.7 syntax, a loader of
torch files that is the same on every torch, and requirements that keep the
dockers' torch, numpy and protobuf."""
import collections
import glob
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import zipfile

import pytest
import torch

from flow import checked_io
from flow.checked_io import InputError, load_torch_file
from conftest import REPO

# The dockers' Python, torch, numpy and protobuf: 2.5 (the last with DPUCADF8H) and 3.5
DOCKERS = {
    "vitis-ai-2.5": ("3.7", {"torch": "1.10.1", "numpy": "1.19.5", "protobuf": "3.19.6"}),
    "vitis-ai-3.5": ("3.8", {"torch": "1.13.1", "numpy": "1.22.4", "protobuf": "3.20.3"}),
}
PINNED = ("torch", "numpy", "protobuf")
PACKAGES = ("vaiq", "dpu", "flow", "quantization", "hls", "reporting", "tools")


# ---------------------------------------------------------------- Python 3.7 syntax

def project_python_files():
    files = glob.glob(os.path.join(REPO, "*.py")) + glob.glob(os.path.join(REPO, "tests", "*.py")) + \
        [path for package in PACKAGES for path in glob.glob(os.path.join(REPO, package, "*.py"))]
    assert len(files) > 20
    return sorted(files)


def run_vermin(*args):
    vermin = os.path.join(os.path.dirname(sys.executable), "vermin")
    return subprocess.run([vermin, "--target=3.7-", "--no-tips", "--violations", "--eval-annotations",
                           "--no-parse-comments"] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)


def test_every_python_file_runs_on_python_3_7():
    result = run_vermin(*project_python_files())
    assert result.returncode == 0, result.stdout


NEWER = {
    # vermin parses with the running Python's ast: code is only refused if it parses
    "walrus (3.8)": ((3, 8), "if (n := 3):\n    pass\n"),
    "positional-only parameters (3.8)": ((3, 8), "def f(a, /):\n    pass\n"),
    "dict union (3.9)": ((3, 9), "a = {} | {}\n"),
    "match (3.10)": ((3, 10), "match 3:\n    case 3:\n        pass\n"),
}


@pytest.mark.parametrize("construct", sorted(NEWER))
def test_vermin_catches_newer_syntax(tmp_path, construct):
    """The check above can fail: newer syntax is refused."""
    parses_from, source = NEWER[construct]
    if sys.version_info < parses_from:
        pytest.skip("Python {}.{} cannot parse it, so vermin cannot check it".format(*sys.version_info[:2]))
    newer = tmp_path / "newer.py"
    newer.write_text("import os\n" + source)
    assert run_vermin(str(newer)).returncode != 0
    newer.write_text("import os\n")
    assert run_vermin(str(newer)).returncode == 0


# ---------------------------------------------------------------- the torch file loader

def same(a, b):
    """Equal types and values; tensors of equal dtype, shape, strides and bytes."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    elif isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.stride(), a.requires_grad) == (b.dtype, b.shape, b.stride(), b.requires_grad)
        assert a.numpy().tobytes() == b.numpy().tobytes()
    else:
        assert a == b and repr(a) == repr(b)  # repr: -0.0 and 0.0 differ


def torch_load(path):
    """torch.load of a trusted file, on every torch: 1.10 knows no weights_only,
    2.6 and later default it to True."""
    import inspect

    if "weights_only" in inspect.signature(torch.load).parameters:
        return torch.load(path, map_location="cpu", weights_only=False)
    return torch.load(path, map_location="cpu")


SHIPPED_PTH = sorted(glob.glob(os.path.join(REPO, "tests", "fixtures", "golden", "**", "*.pth"), recursive=True) +
                     glob.glob(os.path.join(REPO, "checkpoints", "*.pth")) +
                     glob.glob(os.path.join(REPO, "quantize_result", "*.pth")))


def test_loader_equals_torch_load_on_every_shipped_file():
    """State dicts and bias_corr.pth of the real quantizer (torch 1.13) and of this project."""
    kinds = collections.Counter()
    for path in SHIPPED_PTH:
        ours = load_torch_file(path)
        same(ours, torch_load(path))
        kinds[type(ours).__name__] += 1
        if os.path.basename(path) == "bias_corr.pth":
            assert ours and all(isinstance(v, list) and isinstance(v[0], float) for v in ours.values())
    assert kinds["OrderedDict"] >= 10 and kinds["dict"] >= 8, kinds


def odd_tensors():
    x = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    return collections.OrderedDict([
        ("double", x), ("view", x[1:, 2:4]), ("transposed", x.t()), ("half", torch.ones(3, dtype=torch.float16)),
        ("long", torch.arange(5)), ("int", torch.arange(3, dtype=torch.int32)),
        ("uint8", torch.arange(5, dtype=torch.uint8)), ("int8", torch.tensor([-128, 127], dtype=torch.int8)),
        ("bool", torch.tensor([True, False])), ("scalar", torch.tensor(-0.0)), ("empty", torch.zeros(0, 3)),
        ("floats", [1.5, -0.0, 1e-300]), ("mixed", ("text", 3, None, True, {"k": [2]})),
    ])


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_loader_equals_torch_load_in_both_formats(tmp_path, zip_format):
    """The zip format of torch >= 1.6 and the legacy one of torch 1.4 (a pickle followed
    by the storages), with views sharing a storage as torch.load gives them."""
    path = str(tmp_path / "odd.pth")
    torch.save(odd_tensors(), path, _use_new_zipfile_serialization=zip_format)
    with open(path, "rb") as f:
        assert (f.read(1) == b"\x80") != zip_format
    ours = load_torch_file(path)
    same(ours, torch_load(path))
    assert ours["view"].data_ptr() == ours["double"].data_ptr() + (6 + 2) * 8
    ours["view"][0, 0] = 99
    assert ours["double"][1, 2] == 99


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_loader_refuses_a_file_that_would_run_code(tmp_path, zip_format):
    marker = tmp_path / "ran"

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("touch {}".format(marker),))

    path = str(tmp_path / "evil.pth")
    torch.save({"w": torch.ones(2), "x": RunsCode()}, path, _use_new_zipfile_serialization=zip_format)
    torch_load(path)  # the unsafe load runs it: the file is a real attack
    assert marker.exists()
    marker.unlink()
    with pytest.raises(InputError) as e:
        load_torch_file(path, "bias correction file")
    assert str(e.value) == ("{}: not a loadable bias correction file (it holds Python objects besides tensors "
                            "({}.system), which are not loaded as they could run code)".format(path, os.name))
    assert not marker.exists()


def test_loader_refuses_any_other_global(tmp_path):
    """A module (torch.nn.Linear) is refused too: only the rebuild functions and
    storage types are looked up."""
    path = str(tmp_path / "module.pth")
    torch.save(torch.nn.Linear(2, 1), path)
    with pytest.raises(InputError, match=r"module.pth: not a loadable checkpoint .*\(torch.nn.modules.linear.Linear\)"):
        load_torch_file(path)


def test_loader_names_a_missing_storage(tmp_path):
    path = str(tmp_path / "cut.pth")
    torch.save({"w": torch.ones(2)}, path)
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(str(tmp_path / "new.pth"), "w") as target:
        for item in source.infolist():
            if "/data/" not in item.filename:
                target.writestr(item, source.read(item))
    with pytest.raises(InputError) as e:
        load_torch_file(str(tmp_path / "new.pth"))
    assert str(e.value) == "{}: not a loadable checkpoint (storage 0 missing from the archive)".format(
        tmp_path / "new.pth")


def test_loader_does_not_use_torch_load(tmp_path, monkeypatch):
    """The same code on every torch: torch.load is not called."""
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", refuse)
    same(load_torch_file(SHIPPED_PTH[0]), load_torch_file(SHIPPED_PTH[0]))
    assert checked_io.load_torch_file is load_torch_file


# ---------------------------------------------------------------- requirements in the dockers

def requirement_lines(name):
    with open(os.path.join(REPO, name)) as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


def marker_environment(python):
    return {"python_version": python, "python_full_version": python + ".0", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def requirements_for(python):
    """requirements.txt and requirements-test.txt as they apply on `python`: pip evaluates
    the markers of the files against the Python it runs on, not --python-version."""
    from packaging.requirements import Requirement

    found = []
    for line in requirement_lines("requirements.txt") + requirement_lines("requirements-test.txt"):
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(marker_environment(python)):
            requirement.marker = None
            found.append(str(requirement))
    return found


@pytest.mark.parametrize("docker", sorted(DOCKERS))
def test_requirements_accept_the_docker_versions(docker):
    from packaging.requirements import Requirement

    python, pins = DOCKERS[docker]
    for package in PINNED:
        found = [Requirement(line) for line in requirements_for(python) if Requirement(line).name == package]
        assert found, "{} is not in requirements.txt".format(package)
        assert all(r.specifier.contains(pins[package]) for r in found), "{} would be replaced".format(found)


def fake_wheel(folder, name, version):
    """A wheel that only says which version is there: the docker's package as pip sees it,
    without the download (torch of 1.10 and 1.13 are ~0.9 GB, without metadata files on PyPI)."""
    path = os.path.join(folder, "{}-{}-py3-none-any.whl".format(name, version))
    info = "{}-{}.dist-info/".format(name, version)
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(info + "METADATA", "Metadata-Version: 2.1\nName: {}\nVersion: {}\n".format(name, version))
        wheel.writestr(info + "WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(info + "RECORD", "")
    return path


def pypi_reachable():
    try:
        urllib.request.urlopen("https://pypi.org/simple/catalyst/", timeout=10).close()
        return None
    except Exception as e:  # no network, DNS, proxy, certificates
        try:  # this machine's pip may trust a proxy's certificate that urllib does not
            subprocess.run([sys.executable, "-m", "pip", "index", "versions", "--timeout", "10", "--retries", "0",
                            "tqdm"], check=True, timeout=60, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            return None
        except Exception:
            return "{}: {}".format(type(e).__name__, e)


def resolve(tmp_path, python, pins, requirements):
    """pip's resolution of `requirements` for CPython `python` on Linux with the pins as the
    only candidates of their packages: (exit code, report or None, pip's output)."""
    folder = tmp_path / "wheels"
    folder.mkdir(exist_ok=True)
    pinned = ["{} @ file://{}".format(name, fake_wheel(str(folder), name, version)) for name, version in pins.items()]
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--report", str(report),
               "--target", str(tmp_path / "target"), "--python-version", python, "--implementation", "cp",
               "--only-binary=:all:", "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
               "--platform", "manylinux_2_28_x86_64"] + pinned + requirements
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                            env=env, timeout=600)
    found = json.loads(report.read_text()) if result.returncode == 0 else None
    return result.returncode, found, result.stdout


def held_back(report, output):
    """Packages that need torch, numpy or protobuf and of which pip had to take an older
    release for the pins: in a docker, where they are installed but not pinned, pip
    upgrades the installed package instead."""
    from packaging.requirements import Requirement

    backtracked = set(re.findall(r"pip is looking at multiple versions of (\S+) ", output))
    held = []
    for item in report["install"]:
        name = item["metadata"]["name"]
        needs = {Requirement(r).name.lower() for r in item["metadata"].get("requires_dist", []) if "extra ==" not in r}
        if name.lower() in {b.lower() for b in backtracked} and needs & set(PINNED):
            held.append("{}=={}".format(name, item["metadata"]["version"]))
    return held


@pytest.fixture(scope="module")
def pypi():
    import pip
    from packaging.version import Version

    if Version(pip.__version__) < Version("22.2"):
        pytest.skip("pip {} has no install --dry-run --report (pip 22.2)".format(pip.__version__))
    problem = pypi_reachable()
    if problem:
        pytest.skip("PyPI is unreachable, the resolution is not tested ({})".format(problem))


@pytest.mark.parametrize("docker", sorted(DOCKERS))
def test_pip_keeps_the_docker_torch_numpy_protobuf(tmp_path, pypi, docker):
    """`pip install -r requirements.txt -r requirements-test.txt` in the docker, resolved
    with pip against the index (the newest releases of everything else)."""
    python, pins = DOCKERS[docker]
    start = time.time()
    code, report, output = resolve(tmp_path, python, pins, requirements_for(python))
    assert code == 0, "the requirements need other torch, numpy or protobuf than {}:\n{}".format(pins, output[-3000:])
    versions = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in report["install"]}
    assert {name: versions[name] for name in PINNED} == pins
    assert versions["catalyst"] == "22.4" and "onnx" in versions and "matplotlib" in versions
    assert held_back(report, output) == [], output[-3000:]
    print("{}: resolved in {:.0f} s".format(docker, time.time() - start))


def test_resolution_fails_for_a_requirement_that_needs_newer_torch(tmp_path, pypi):
    """The check above can fail: accelerate 1.3 needs torch 2."""
    python, pins = DOCKERS["vitis-ai-2.5"]
    code, report, output = resolve(tmp_path, "3.9", pins, ["accelerate==1.3.0"])  # 1.3 is for Python 3.9+
    assert code != 0 and "torch" in output and "accelerate" in output, output[-3000:]
