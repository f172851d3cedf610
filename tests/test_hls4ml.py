"""hls4ml_project.py: the C simulation of the hls4ml project equals the real quantizer's
test-mode outputs and the integer DPU reference on every row, bit for bit; the project
targets the U250 and is the same bytes when written again; bad input fails cleanly.

Every run builds a C simulation with g++ (about 10-25 s), so each project is built once,
in a module fixture, two at a time."""
import dataclasses
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import REPO, assert_clean_error, run_script, snapshot

import hls4ml_project
from hls import project
from dpu import reference
from vaiq.legalize import shift_bias
from dpu.xmodel import read_graph, read_xmodel, serialize_graph, write_xmodel

try:
    import hls4ml  # noqa: F401
    NO_HLS4ML = None
except ImportError:
    NO_HLS4ML = "hls4ml 1.3.0 needs Python 3.10 or newer (this is {})".format(sys.version.split()[0])
needs_hls4ml = pytest.mark.skipif(NO_HLS4ML is not None, reason=NO_HLS4ML or "")

GOLDEN = os.path.join(REPO, "tests", "fixtures", "golden")
CASES = ["p1_trained_in2", "p2_trained_in2_nocorr", "p3_random_in4", "p4_trained_in2_deploy4"]
# FFN variants whose ops hls4ml reproduces too: leaky-relu, relu6, scale (BatchNorm1d) + relu.
LAYER_CASES = {"V1": "FFN_V1", "V3b": "FFN_V3b", "V5": "FFN_V5"}
P1_XMODEL = os.path.join(GOLDEN, "p1_trained_in2", "expected", "quantize_result", "FFN_int.xmodel")
P1_DATA = os.path.join(GOLDEN, "p1_trained_in2", "calib.npy")


def golden_xmodel(case):
    return os.path.join(GOLDEN, case, "expected", "quantize_result", "FFN_int.xmodel")


def extreme_model():
    """p1's network at batch 4 with random int8 parameters at extreme and negative fix
    positions: input -3, weights -4..23, a bias 26 (shift_bias -6) and one at 40 (-28),
    chosen so that every layer's outputs still spread over many codes."""
    model = read_xmodel(P1_XMODEL)
    rng = np.random.RandomState(0)
    positions = [(23, 26, 13), (-4, 8, 3), (9, 40, 8)]   # (weight, bias, output)
    layers = [dataclasses.replace(layer, weight=rng.randint(-128, 128, layer.weight.shape).astype(np.int8),
                                  bias=rng.randint(-128, 128, layer.bias.shape).astype(np.int8),
                                  fp_w=w, fp_b=b, fp_out=o)
              for layer, (w, b, o) in zip(model.layers, positions)]
    return dataclasses.replace(model, fp_in=-3, layers=layers, batch=4)


def extreme_data(model):
    """2000 rows on the half steps of the input position (ties of its rounding), some saturating."""
    rng = np.random.RandomState(1)
    features = np.ldexp(rng.randint(-300, 300, (2000, model.input_size)).astype(np.float64), -(model.fp_in + 1))
    return np.hstack([features, np.zeros((len(features), 1))])


def grid_data(case):
    """All 65536 pairs of int8 input codes of a layers/ case, with a target column."""
    grid = np.load(os.path.join(GOLDEN, "layers", case, "expected", "grid_inputs.npy"))
    return np.hstack([grid.astype(np.float64), np.zeros((len(grid), 1))])


def hls(tmp_path, *args, env=None, timeout=120):
    """The script in tmp_path, with another environment if given (run_script keeps this one's)."""
    if env is None:
        return run_script("hls4ml_project.py", *args, cwd=str(tmp_path), timeout=timeout)
    command = [sys.executable, os.path.join(REPO, "hls4ml_project.py")] + [str(arg) for arg in args]
    return subprocess.run(command, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout)




# Writes what Vitis HLS writes for the report: the csynth report, the file listing the solution.
FAKE_VITIS_RUN = """#!/bin/bash
echo "vitis-run $*"
mkdir -p ffn_prj/solution1/syn/report
echo '<AutoPilot:project xmlns:AutoPilot="x"><solutions><solution name="solution1"/></solutions></AutoPilot:project>' \\
    > ffn_prj/hls.app
cat > ffn_prj/solution1/syn/report/ffn_csynth.xml <<'XML'
<profile><UserAssignments><TargetClockPeriod>5.00</TargetClockPeriod></UserAssignments>
<PerformanceEstimates><SummaryOfTimingAnalysis><EstimatedClockPeriod>3.650</EstimatedClockPeriod>
</SummaryOfTimingAnalysis><SummaryOfOverallLatency><Best-caseLatency>6</Best-caseLatency>
<Worst-caseLatency>6</Worst-caseLatency><Interval-min>1</Interval-min><Interval-max>1</Interval-max>
</SummaryOfOverallLatency></PerformanceEstimates>
<AreaEstimates><Resources><BRAM_18K>0</BRAM_18K><DSP>0</DSP><FF>815</FF><LUT>2431</LUT><URAM>0</URAM></Resources>
<AvailableResources><BRAM_18K>5376</BRAM_18K><DSP>12288</DSP><FF>3456000</FF><LUT>1728000</LUT><URAM>1280</URAM>
</AvailableResources></AreaEstimates></profile>
XML
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: (CompletedProcess, its --output_dir, its --save_outputs)} of every run, built once."""
    tmp = tmp_path_factory.mktemp("hls")
    jobs = {}
    for case in CASES:
        jobs[case] = (golden_xmodel(case), os.path.join(GOLDEN, case, "calib.npy"))
    for case, net in LAYER_CASES.items():
        data = str(tmp / (case + "_grid.npy"))
        np.save(data, grid_data(case))
        jobs[case] = (os.path.join(GOLDEN, "layers", case, "expected", "quantize_result", net + "_int.xmodel"), data)
    model = extreme_model()
    jobs["extreme"] = (str(tmp / "extreme.xmodel"), str(tmp / "extreme.npy"))
    write_xmodel(model, jobs["extreme"][0])
    np.save(jobs["extreme"][1], extreme_data(model))

    tools = tmp / "tools"
    tools.mkdir()
    (tools / "vitis-run").write_text(FAKE_VITIS_RUN)
    os.chmod(str(tools / "vitis-run"), 0o755)

    def run(name):
        xmodel, data = jobs[name]
        out, outputs = str(tmp / name), str(tmp / (name + "_outputs.npy"))
        # p2 and p3 also ask for synthesis: p2 without Vitis HLS, p3 with a stand-in for it.
        extra = ["--synth"] if name in ("p2_trained_in2_nocorr", "p3_random_in4") else []
        env = dict(os.environ, PATH=str(tools) + os.pathsep + os.environ["PATH"]) if name == "p3_random_in4" else None
        return name, (hls(tmp, xmodel, "--data", data, "--output_dir", out, "--save_outputs", outputs, *extra,
                          env=env, timeout=600), out, outputs)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(pool.map(run, jobs))
    return results


def result_line(run):
    return [line for line in run.stdout.splitlines() if "rows compared" in line][-1]


@needs_hls4ml
@pytest.mark.parametrize("case", CASES)
def test_csim_equals_the_quantizer_on_every_golden_row(runs, case):
    run, out, outputs = runs[case]
    expected = np.load(os.path.join(GOLDEN, case, "expected", "test_outputs.npy"))
    if case == "p2_trained_in2_nocorr":
        assert run.returncode == hls4ml_project.EXIT_NO_HLS_TOOL, run.stderr
        assert run.stderr.strip() == "hls4ml_project: --synth needs Vitis HLS (vitis-run) on PATH; the C simulation ran"
    else:
        assert run.returncode == 0, run.stderr
    assert result_line(run) == "hls4ml_project FFN_int.xmodel: {} rows compared with the integer DPU reference: " \
        "all equal".format(len(expected))
    if case == "p3_random_in4":
        assert run.stdout.splitlines()[-1] == "hls4ml_project: Vitis synthesis: latency 6-6 cycles, interval 1-1, " \
            "clock 3.650 ns (target 5.00); LUT 2431 of 1728000; FF 815 of 3456000; DSP 0 of 12288; " \
            "BRAM_18K 0 of 5376; URAM 0 of 1280"
        with open(os.path.join(out, "build_stdout.log")) as f:
            assert f.read() == "vitis-run --tcl build_prj.tcl --mode hls\n"
        with open(os.path.join(out, "build_opt.tcl")) as f:
            assert "csim       0\n    synth      1\n" in f.read()
    got = np.load(outputs)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_golden_xmodels_include_batch_4():
    assert [read_xmodel(golden_xmodel(case)).batch for case in CASES] == [1, 1, 1, 4]


@needs_hls4ml
@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_leaky_relu6_and_scale_equal_the_quantizer_on_every_input_code(runs, case):
    run, _, outputs = runs[case]
    assert run.returncode == 0, run.stderr
    assert "65536 rows compared with the integer DPU reference: all equal" in result_line(run)
    expected = np.load(os.path.join(GOLDEN, "layers", case, "expected", "grid_outputs.npy"))
    assert np.array_equal(np.load(outputs), expected.reshape(-1, 1))


def test_extreme_model_is_extreme():
    model = extreme_model()
    fps = [model.fp_in] + [fp for layer in model.layers for fp in (layer.fp_w, layer.fp_b, layer.fp_out)]
    assert min(fps) < 0 and max(fps) >= 40
    assert min(shift_bias(i, layer.fp_w, layer.fp_b) for i, layer in model.linear_layers()) <= -28
    trace = reference.run(model, extreme_data(model)[:, :-1])
    assert all(len(np.unique(layer.out)) >= 40 for layer in trace.layers)


@needs_hls4ml
def test_csim_equals_the_dpu_reference_at_extreme_positions(runs, tmp_path):
    run, _, outputs = runs["extreme"]
    assert run.returncode == 0, run.stderr
    assert "2000 rows compared with the integer DPU reference: all equal" in result_line(run)
    model = extreme_model()
    expected = reference.outputs(model, extreme_data(model)[:, :-1])
    assert np.array_equal(np.load(outputs), expected)


@needs_hls4ml
def test_project_targets_the_u250_and_is_the_same_bytes_twice(runs):
    """p4's xmodel is p1's network at batch 4, so its project is p1's written again, by
    another process in another temporary folder: the same bytes, library included, but
    for the folder's name in hls4ml_config.yml."""
    assert dataclasses.replace(read_xmodel(golden_xmodel(CASES[3])), batch=1).layers.__repr__() == \
        read_xmodel(golden_xmodel(CASES[0])).layers.__repr__()
    run, out, _ = runs[CASES[0]]
    files, again = snapshot(out), snapshot(runs[CASES[3]][1])
    config = "hls4ml_config.yml"
    assert sorted(files) == sorted(again)
    assert [name for name in files if files[name] != again[name]] == [config]
    assert files[config].replace(CASES[0].encode(), CASES[3].encode()) == again[config]
    assert b"Part: xcu250-figd2104-2L-e\n" in files["hls4ml_config.yml"]
    assert b'set part "xcu250-figd2104-2L-e"' in files["project.tcl"]
    assert any(name.startswith("firmware/ffn-") and name.endswith(".so") for name in files)
    # No trace of the temporary folder it was built in, nor of the machine's paths.
    for name, data in files.items():
        assert data is None or (b".tmp-" not in data and REPO.encode() not in data), name
    assert not [name for name in os.listdir(os.path.dirname(out)) if name.startswith(".tmp-")]
    assert "written in" in run.stdout and "C simulation built in" in run.stdout and "rows run in" in run.stdout


@needs_hls4ml
def test_the_build_shows_a_line_per_step_in_a_log(runs):
    """The 7 to 28 s of g++: on a terminal a bar, in a log (here: a pipe) a plain line per step."""
    run, out, _ = runs[CASES[0]]
    stamp = next(name for name in os.listdir(os.path.join(out, "firmware")) if name.endswith(".so"))
    assert [line for line in run.stdout.splitlines() if "C simulation build" in line] == [
        "hls4ml_project.py: C simulation build (g++): 1/3 g++ -c firmware/ffn.cpp",
        "hls4ml_project.py: C simulation build (g++): 2/3 g++ -c ffn_bridge.cpp",
        "hls4ml_project.py: C simulation build (g++): 3/3 g++ link firmware/" + stamp]
    assert "\r" not in run.stdout + run.stderr and run.stderr == ""


def test_build_steps_are_the_compiles_and_the_link(tmp_path):
    text = ('CC=g++\nif echo "" | ${CC} -Werror -fsyntax-only -xc++ - -o /dev/null; then :; fi\n'
            '${CC} ${CFLAGS} -c firmware/${PROJECT}.cpp -o ${PROJECT}.o\n'
            '${CC} ${CFLAGS} -c ${PROJECT}_bridge.cpp -o ${PROJECT}_bridge.o\n'
            '${CC} ${CFLAGS} -shared ${PROJECT}.o ${PROJECT}_bridge.o -o firmware/${PROJECT}-${LIB_STAMP}.so\n')
    script = tmp_path / "build_lib.sh"
    script.write_text(text)
    assert len(project.build_steps(str(script))) == 3
    assert project.describe_step('g++ -O3 -D WEIGHTS_DIR="\\"/x/weights\\"" -c firmware/ffn.cpp -o ffn.o') == \
        "g++ -c firmware/ffn.cpp"
    assert project.describe_step("g++ -O3 -shared ffn.o ffn_bridge.o -o firmware/ffn-1.so") == \
        "g++ link firmware/ffn-1.so"


# ---------------------------------------------------------------- bad input

def test_old_python_is_one_line_and_its_own_exit_code(tmp_path, monkeypatch, capsys):
    if sys.version_info < (3, 10):
        run = hls(tmp_path, P1_XMODEL, "--data", P1_DATA)
        assert run.returncode == hls4ml_project.EXIT_OLD_PYTHON and "Traceback" not in run.stderr
        out = run.stdout
    else:
        monkeypatch.setattr(sys, "argv", ["hls4ml_project.py", P1_XMODEL, "--data", P1_DATA])
        monkeypatch.setattr(sys, "version_info", (3, 8, 10, "final", 0))
        assert hls4ml_project.main() == hls4ml_project.EXIT_OLD_PYTHON
        out = capsys.readouterr().out
    assert len(out.splitlines()) == 1 and "needs Python 3.10 or newer" in out
    assert not (tmp_path / "hls_project").exists()


@needs_hls4ml
@pytest.mark.parametrize("content, problem", [
    (None, "xmodel not found"),
    (b"", "is empty"),
    (b"not an xmodel at all \xff\xfe", "not a valid xmodel"),
    ("truncated", None),
])
def test_bad_xmodel_fails_cleanly(tmp_path, content, problem):
    path = tmp_path / "bad.xmodel"
    if content == "truncated":
        with open(P1_XMODEL, "rb") as f:
            data = f.read()
        content = data[:len(data) // 2]
    if content is not None:
        path.write_bytes(content)
    result = hls(tmp_path, path, "--data", P1_DATA)
    assert_clean_error(result, str(path), *([problem] if problem else []))
    assert not (tmp_path / "hls_project").exists()


@needs_hls4ml
def test_an_op_outside_the_chain_is_named(tmp_path):
    graph = read_graph(P1_XMODEL)
    op = next(op for op in graph.op_node if op.op_type == "relu")
    op.op_type = "sigmoid"
    path = tmp_path / "sigmoid.xmodel"
    path.write_bytes(serialize_graph(graph))
    result = hls(tmp_path, path, "--data", P1_DATA)
    assert_clean_error(result, str(path), op.op_name, "sigmoid")


@needs_hls4ml
def test_output_folder_with_other_files_or_unwritable(tmp_path):
    other = tmp_path / "hls_project"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert_clean_error(hls(tmp_path, P1_XMODEL, "--data", P1_DATA), "hls_project", "notes.txt")
    assert os.listdir(str(other)) == ["notes.txt"]
    (tmp_path / "a_file").write_text("")
    assert_clean_error(hls(tmp_path, P1_XMODEL, "--data", P1_DATA, "--output_dir", "a_file/prj"), "a_file")


@needs_hls4ml
def test_missing_gpp_or_hls4ml_is_one_line(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path / "empty"))
    assert_clean_error(hls(tmp_path, P1_XMODEL, "--data", P1_DATA, env=env), "g++", "not found on PATH")
    fake = tmp_path / "site" / "hls4ml"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no module named hls4ml.backends')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    assert_clean_error(hls(tmp_path, P1_XMODEL, "--data", P1_DATA, env=env), "hls4ml", "pip install")
    assert not (tmp_path / "hls_project").exists()


@needs_hls4ml
def test_bad_data_and_flags(tmp_path):
    np.save(str(tmp_path / "wide.npy"), np.zeros((3, 5)))
    assert_clean_error(hls(tmp_path, P1_XMODEL, "--data", "wide.npy"), "wide.npy", "columns")
    assert_clean_error(hls(tmp_path, P1_XMODEL, "--data", P1_DATA, "--save_outputs", "out.txt"), "out.txt", ".npy")
    assert not (tmp_path / "hls_project").exists()


@needs_hls4ml
def test_report_shows_the_csim_beside_the_dpu(runs, tmp_path):
    import report
    from test_report import golden_args, markdown_table

    assert report.main(golden_args(tmp_path, hls_outputs=runs[CASES[0]][2])) == 0
    text = (tmp_path / "report" / "README.md").read_text()
    rows = {row["model"]: row for row in markdown_table(text, "model")}
    assert rows["int8, hls4ml C simulation"] == dict(rows["int8"], model="int8, hls4ml C simulation")
    assert "equal to the DPU arithmetic on 1000 rows." in text
    assert report.main(golden_args(tmp_path, hls_outputs=tmp_path / "none.npy")) == 0
    text = (tmp_path / "report" / "README.md").read_text()
    assert "No hls4ml C simulation: `{}` not found".format(tmp_path / "none.npy") in text
    assert "int8, hls4ml C simulation" not in text


@needs_hls4ml
def test_a_failed_build_leaves_nothing(tmp_path):
    """A g++ that fails: one line naming the build script, no project, no temporary folder."""
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "g++").write_text("#!/bin/sh\necho 'firmware/ffn.cpp:1: error: no compiler here' >&2\nexit 1\n")
    os.chmod(str(tools / "g++"), 0o755)
    env = dict(os.environ, PATH=str(tools) + os.pathsep + os.environ["PATH"])
    result = hls(tmp_path, P1_XMODEL, "--data", P1_DATA, "--save_outputs", "out.npy", env=env)
    assert_clean_error(result, "hls_project/build_lib.sh: the C simulation did not build with g++",
                       "no compiler here")
    assert sorted(os.listdir(str(tmp_path))) == ["tools"]
