"""compile.sh: the pre-flight checks, then vai_c_xir with closed stdin and a time limit,
then the subgraphs of what it wrote.

vai_c_xir exists only in the Vitis AI docker; here small stand-in scripts on PATH
play it: one that compiles (it writes a file of tests/fixtures/golden/compiled/),
the known failures, and the (Pdb) prompt of Vitis AI 1.3. Each records the exact argv
it got: a batch-1 xmodel for DPUCADF8H comes with --options '{"input_shape": "4,2"}'
(Xilinx's DPUCADF8H README), a batch-4 one without.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, assert_clean_error, run_script, snapshot

from dpu import targets as dpu_targets
from dpu import preflight
from flow.checked_io import InputError
from dpu.xmodel import read_graph, read_xmodel, serialize_graph, write_xmodel

COMPILE = os.path.join(REPO, "compile.sh")
GOLDEN_ROOT = os.path.join(REPO, "tests", "fixtures", "golden")
# The batch-4 deploy of p1's model: what DPUCADF8H compiles as it is.
GOLDEN = os.path.join(GOLDEN_ROOT, "p4_trained_in2_deploy4")
GOLDEN_RESULT = os.path.join(GOLDEN, "expected", "quantize_result")
# p1's batch-1 deploy, as vai_q_pytorch wants to export: DPUCADF8H compiles it with --options.
GOLDEN_1 = os.path.join(GOLDEN_ROOT, "p1_trained_in2")
BATCH_1_XMODEL = os.path.join(GOLDEN_1, "expected", "quantize_result", "FFN_int.xmodel")
INPUT_SHAPE_4 = '{"input_shape": "4,2"}'     # vai_c_xir's --options for p1's batch-1 xmodel
COMPILED = os.path.join(GOLDEN_ROOT, "compiled")
ON_DPU, ON_CPU = os.path.join(COMPILED, "FFN_qd_dpu.xmodel"), os.path.join(COMPILED, "FFN_qd_cpu.xmodel")

DEPLOY_4 = ("deploy at batch 4: python vai_q_pytorch_quant.py --data_dir data --quant_mode test --deploy "
            "--deploy_batch 4 --batch_size 64")
DEPLOY_1 = ("python vai_q_pytorch_quant.py --data_dir data --quant_mode test --deploy --deploy_batch 1 "
            "--batch_size 64")

# Bodies of the stand-in vai_c_xir (sh scripts). "{argv}" is the file that records the arguments,
# "{compiled}" the file that "ok" writes as the compiled xmodel.
COMPILERS = {
    "ok": """printf '%s\\n' "$@" > "{argv}"
while [ $# -gt 0 ]; do
    case $1 in -o) out=$2 ;; -n) name=$2 ;; esac
    shift
done
echo "compiling $name"
cp "{compiled}" "$out/$name.xmodel"
echo md5 > "$out/md5sum.txt"
echo '{{}}' > "$out/meta.json"
""",
    "no_front_end": 'echo "ERROR: NO FRONT END SPECIFIED"; exit 1',
    "shift_refused": 'echo "[UNILOG][FATAL] Invalid shift_bias(-10)"; exit 1',
    "crash": 'echo "Segmentation fault" >&2; exit 7',
    "no_output": 'echo "done"',
    # Vitis AI 1.3: a breakpoint prompt that reads commands until stdin ends.
    "pdb": 'while true; do printf "(Pdb) "; read -r command || exit 1; done',
    # ... and one that does not end at the end of stdin; {argv} gets the time of its prompt.
    "pdb_ignoring_eof": 'echo "> gen_param_ddr_demo.py(213)bias_data_int()"; date +%s.%N > "{argv}"; '
                        'printf "(Pdb) "; sleep 60',
    "hang": "sleep 60",
    "hang_recording_its_pid": 'echo $$ > "{argv}"; exec sleep 60',
}


def make_project(folder, golden):
    """`folder` with a golden deploy output, its data as data/test.npy and an arch.json."""
    result = folder / "quantize_result"
    result.mkdir()
    golden_result = os.path.join(golden, "expected", "quantize_result")
    shutil.copy(os.path.join(golden_result, "FFN_int.xmodel"), str(result))
    dumps = "deploy_check_data_int"
    shutil.copytree(os.path.join(golden_result, dumps), str(result / dumps))
    (folder / "data").mkdir()
    # The golden deploy ran on the first rows of calib.npy.
    shutil.copy(os.path.join(golden, "calib.npy"), str(folder / "data" / "test.npy"))
    arch = folder / "arch" / "arch.json"
    arch.parent.mkdir()
    arch.write_text(json.dumps({"target": "DPUCADF8H"}))
    return folder


@pytest.fixture
def project(tmp_path):
    """A project folder with the golden batch-4 deploy output (p4)."""
    return make_project(tmp_path, GOLDEN)


@pytest.fixture
def project_1(tmp_path):
    """A project folder with the golden batch-1 deploy output (p1), as vai_q_pytorch exports."""
    return make_project(tmp_path, GOLDEN_1)


def compile_command(cwd, *args, compiler=None, env=None, compiled=ON_DPU):
    """The command and environment that run compile.sh with the stand-in `compiler` as the
    only vai_c_xir on PATH ("ok" writes the file `compiled`)."""
    path = [d for d in os.environ["PATH"].split(os.pathsep)
            if d and not os.path.exists(os.path.join(d, "vai_c_xir"))]
    if compiler:
        bin_dir = cwd / "bin"
        bin_dir.mkdir(exist_ok=True)
        script = bin_dir / "vai_c_xir"
        script.write_text("#!/bin/sh\n" + COMPILERS[compiler].format(argv=cwd / "argv.txt", compiled=compiled)
                          + "\n")
        script.chmod(0o755)
        path.insert(0, str(bin_dir))
    environment = dict(os.environ, PATH=os.pathsep.join(path), PY=sys.executable, COMPILE_TIMEOUT="20")
    environment.pop("COMPILE_DATA", None)
    environment.update(env or {})
    return ["bash", COMPILE] + [str(a) for a in args], environment


def run_compile(cwd, *args, compiler=None, env=None, stdin=subprocess.DEVNULL, compiled=ON_DPU):
    command, environment = compile_command(cwd, *args, compiler=compiler, env=env, compiled=compiled)
    return subprocess.run(command, cwd=str(cwd), env=environment, stdin=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=60)


def compile_args(project, xmodel=None, arch=None):
    return [xmodel or project / "quantize_result" / "FFN_int.xmodel", arch or project / "arch" / "arch.json",
            "NET", project / "out"]


def finding_lines(stdout):
    return [line for line in stdout.splitlines() if line.split(":")[0] in ("ok", "skip", "FAIL")]


def assert_fails(run, code, *fragments):
    assert_clean_error(run, *fragments)
    assert run.returncode == code, run.stderr


# ---------------------------------------------------------------- runs that reach the compiler

def test_good_run(project):
    args = compile_args(project)
    run = run_compile(project, *args, compiler="ok")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stderr == ""
    findings = finding_lines(run.stdout)
    assert [line.split(":")[0] for line in findings] == ["ok"] * 7, run.stdout
    assert "parses: 3 layers (2 -> 6 -> 4 -> 1), batch 4, ops data/const/fix/matmul/relu" in findings[0]
    assert findings[1] == "ok: shifts in the DPU ranges: l1 cut 7 bias 6, l2 cut 7 bias 5, l3 cut 6 bias 4"
    assert findings[2] == "ok: arch {} (target DPUCADF8H)".format(args[1])
    assert findings[3] == "ok: batch 4, the batch DPUCADF8H's compiler takes"
    assert findings[4] == "ok: activations relu: DPUCADF8H's engines have them"
    assert findings[5] == "ok: integer reference on data/test.npy: 1000 rows, MSE 1.862041e-04"
    assert findings[6].startswith("ok: deploy check: all 22 tensors")
    assert findings[6].endswith("match the integer reference on rows 0 to 3")
    assert (project / "argv.txt").read_text().splitlines() == [
        "-x", str(args[0]), "-a", str(args[1]), "-n", "NET", "-o", str(args[3])]
    assert "compiling NET" in run.stdout            # the compiler's output is shown...
    assert "compiling NET" in (project / "out" / "vai_c_xir.log").read_text()    # ...and kept
    net = project / "out" / "NET.xmodel"
    assert run.stdout.splitlines()[-4:] == [
        "compiled {}: on the DPU: 1 subgraph (21 ops); on the CPU: none".format(net),
        "  subgraph_FFN__input_0: USER, 1 op",
        "  subgraph_FFN__FFN_Linear_l1__ret_1: DPU, 21 ops",
        "compiled: {}".format(net)]
    assert {"NET.xmodel", "md5sum.txt", "meta.json"} <= set(os.listdir(str(project / "out")))
    # The findings are kept beside the compiler's output.
    assert (project / "out" / "preflight.txt").read_text().splitlines() == findings
    assert not [name for name in os.listdir(str(project / "out")) if name.startswith(".")]


def argv_of_the_compiler(project):
    return (project / "argv.txt").read_text().splitlines()


@pytest.mark.parametrize("arch", [
    ("opt/DPUCADF8H/U200/arch.json", {}),
    ("arch/isa.json", {"target": "DPUCADF8H_ISA0"}),
    ("arch/fingerprint.json", {"fingerprint": "0x700000000000000"}),
], ids=["path", "arch.json target", "fingerprint"])
def test_a_batch_1_xmodel_gets_the_input_shape_of_batch_4(project_1, arch):
    """Xilinx's DPUCADF8H README: --options '{"input_shape": "4,..."}' for a model whose batch is not 4."""
    arch = write_arch(project_1, *arch)
    args = compile_args(project_1, arch=arch)
    run = run_compile(project_1, *args, compiler="ok")
    assert run.returncode == 0, run.stdout + run.stderr
    assert argv_of_the_compiler(project_1) == [
        "-x", str(args[0]), "-a", str(arch), "-n", "NET", "-o", str(args[3]), "--options", INPUT_SHAPE_4]
    findings = finding_lines(run.stdout)
    assert [line.split(":")[0] for line in findings] == ["ok"] * 7, run.stdout
    assert "batch 1, ops" in findings[0]
    assert findings[3] == "ok: batch 1: vai_c_xir gets --options '{}', the batch DPUCADF8H compiles " \
                          "(Xilinx's DPUCADF8H README)".format(INPUT_SHAPE_4)
    assert findings[6].endswith("match the integer reference on row 0")
    assert "-o {} --options '{}' (time limit".format(args[3], INPUT_SHAPE_4) in run.stdout
    assert run.stdout.splitlines()[-1] == "compiled: {}".format(project_1 / "out" / "NET.xmodel")


@pytest.mark.parametrize("golden, compile_options, expected", [
    (GOLDEN_1, '{"mode": "debug"}', '{"input_shape": "4,2", "mode": "debug"}'),
    (GOLDEN_1, '{"input_shape": "4,2,1", "mode": "debug"}', '{"input_shape": "4,2,1", "mode": "debug"}'),
    (GOLDEN, '{"mode": "debug", "n": [1, 2]}', '{"mode": "debug", "n": [1, 2]}'),
    (GOLDEN, '  {}  ', None),
    (GOLDEN_1, '', INPUT_SHAPE_4),          # set but empty: as if unset
], ids=["batch 1 + user's", "user's input_shape wins", "batch 4: the user's only", "empty object", "empty"])
def test_compile_options_are_merged_and_passed_through(tmp_path, golden, compile_options, expected):
    project = make_project(tmp_path, golden)
    args = compile_args(project)
    run = run_compile(project, *args, compiler="ok", env={"COMPILE_OPTIONS": compile_options})
    assert run.returncode == 0, run.stdout + run.stderr
    assert argv_of_the_compiler(project) == ["-x", str(args[0]), "-a", str(args[1]), "-n", "NET", "-o", str(args[3])] \
        + (["--options", expected] if expected else [])
    if "input_shape" in compile_options:
        assert "ok: batch 1: vai_c_xir gets COMPILE_OPTIONS's input_shape \"4,2,1\" (DPUCADF8H compiles batch 4: " \
               "Xilinx's DPUCADF8H README)" in run.stdout


def test_compile_options_go_to_other_dpus_too(project_1):
    arch = write_arch(project_1, "arch/zcu102.json", {"target": "DPUCZDX8G_ISA1_B4096"})
    args = compile_args(project_1, arch=arch)
    run = run_compile(project_1, *args, compiler="ok")
    assert run.returncode == 0, run.stdout + run.stderr
    assert argv_of_the_compiler(project_1) == ["-x", str(args[0]), "-a", str(arch), "-n", "NET", "-o", str(args[3])]
    run = run_compile(project_1, *args, compiler="ok", env={"COMPILE_OPTIONS": '{"mode": "debug"}'})
    assert run.returncode == 0, run.stdout + run.stderr
    assert argv_of_the_compiler(project_1)[-2:] == ["--options", '{"mode": "debug"}']


@pytest.mark.parametrize("compile_options, problem", [
    ("input_shape=4,2", "not valid JSON (Expecting value: line 1 column 1 (char 0))"),
    ('{"input_shape": "4,2"', "not valid JSON (Expecting ',' delimiter"),
    ("{'input_shape': '4,2'}", "not valid JSON (Expecting property name enclosed in double quotes"),
    ('["input_shape", "4,2"]', "an array in JSON, not an object"),
    ('"4,2"', "a string in JSON, not an object"),
    ("4", "a number in JSON, not an object"),
    ("[" * 100000, "not valid JSON (nested too deeply)"),
], ids=["words", "unclosed", "single quotes", "array", "string", "number", "deep"])
@pytest.mark.parametrize("compiler", ["ok", None], ids=["with vai_c_xir", "without"])
def test_bad_compile_options_are_refused_before_anything(project, compile_options, problem, compiler):
    out = project / "out"
    out.mkdir()
    (out / "preflight.txt").write_text("an earlier report\n")
    (out / "NET.xmodel").write_text("an earlier compiled xmodel")
    before = snapshot(str(project))
    run = run_compile(project, *compile_args(project), compiler=compiler, env={"COMPILE_OPTIONS": compile_options})
    assert_fails(run, 2, "COMPILE_OPTIONS '", problem, """expected a JSON object such as '{"input_shape": "4,2"}'""")
    assert run.stdout == ""
    after = snapshot(str(project))
    after.pop("bin", None)                  # the stand-in compiler, written by run_compile
    after.pop("bin/vai_c_xir", None)
    assert after == before          # the compiler did not run (no argv.txt), nothing written
    # Without an OUTPUT_DIR before, none is left behind either.
    run = run_compile(project, *compile_args(project)[:3], project / "new_out", compiler=compiler,
                      env={"COMPILE_OPTIONS": compile_options})
    assert_fails(run, 2, "COMPILE_OPTIONS")
    assert not (project / "new_out").exists()


def test_other_batches_are_refused_for_dpucadf8h_with_both_routes(project):
    model = read_xmodel(os.path.join(GOLDEN_RESULT, "FFN_int.xmodel"))
    model.batch = 2
    xmodel = project / "batch2.xmodel"
    write_xmodel(model, str(xmodel))
    run = run_compile(project, *compile_args(project, xmodel=xmodel), compiler="ok")
    assert_refused(run, str(xmodel), "batch 2, but DPUCADF8H needs batch 4",
                   "assigns every op of another batch to the CPU",
                   "deploy at batch 1, which vai_c_xir then gets as batch 4 with --options '{}' (Xilinx's DPUCADF8H "
                   "README): {}".format(INPUT_SHAPE_4, DEPLOY_1), "or " + DEPLOY_4)
    assert not (project / "argv.txt").exists()


def test_help(project):
    for flag in ("--help", "-h"):
        run = run_compile(project, flag, compiler="ok")
        assert run.returncode == 0 and run.stderr == "", run.stdout + run.stderr
        text = run.stdout
        assert text.startswith("Stage 4: compile the quantized network for a DPU with vai_c_xir")
        assert "Usage: bash compile.sh [XMODEL] [ARCH] [NET_NAME] [OUTPUT_DIR]" in text
        for words in ("(default quantize_result/FFN_int.xmodel)", "(default DPUCADF8H)", "(default FFN_qd)",
                      "(default compile_output)", "COMPILE_DATA ", "COMPILE_OPTIONS ", "COMPILE_TIMEOUT ",
                      "PY ", "(default 600)", "Exit codes:", "  3  no vai_c_xir on PATH", "--options"):
            assert words in text, words
        assert "#" not in text.replace("# ", "")[:0]  # the comment marks are gone
        assert not [line for line in text.splitlines() if line.startswith("#")]
        assert "ok:" not in text and not (project / "argv.txt").exists() and not (project / "compile_output").exists()
    # Also after other words, and without any Python or compiler to find.
    run = run_compile(project, "my.xmodel", "-h", env={"PY": "no-such-python"})
    assert run.returncode == 0 and "Usage: bash compile.sh" in run.stdout


def test_an_unknown_option_is_refused(project):
    assert_refused(run_compile(project, "--xmodel", "a.xmodel", compiler="ok"), "unknown option '--xmodel'",
                   "compile.sh --help")


@pytest.mark.parametrize("name", ["DPUCADF8", "DPUCADF8HH", "dpucadf9h", "U250"])
def test_an_unknown_dpu_name_is_refused_with_the_known_ones(project, name):
    run = run_compile(project, project / "quantize_result" / "FFN_int.xmodel", name)
    assert_refused(run, "{}: unknown DPU name; the known ones, closest first: ".format(name),
                   "(or pass the path of an arch.json)")
    known = run.stderr.split("closest first: ")[1].split(" (or")[0].split(", ")
    assert sorted(known) == sorted(dpu_targets.KNOWN_DPUS)
    if name != "U250":
        assert known[0] == "DPUCADF8H"
    assert "FAIL: {}: unknown DPU name".format(name) in run.stdout
    assert "batch" not in run.stderr and "ok: batch" not in run.stdout and "FAIL: " + str(project) not in run.stdout


def test_known_dpu_names_in_any_case_pass_outside_the_docker(project_1):
    for name in ("DPUCZDX8G", "dpuczdx8g", "dpucadf8h"):
        run = run_compile(project_1, project_1 / "quantize_result" / "FFN_int.xmodel", name)
        assert run.returncode == 3, run.stdout + run.stderr


def test_a_compiled_graph_without_dpu_subgraph_fails(project):
    before = snapshot(str(project / "quantize_result"))
    run = run_compile(project, *compile_args(project), compiler="ok", compiled=ON_CPU)
    net = project / "out" / "NET.xmodel"
    assert_fails(run, 1, str(net), "no DPU subgraph: the compiler left every op of the network on the CPU",
                 "the xmodel has batch 4, the one DPUCADF8H's compiler needs", "see the compiler's output")
    assert run.stdout.splitlines()[-3:] == [
        "compiled {}: on the DPU: none; on the CPU: 1 subgraph (21 ops)".format(net),
        "  subgraph_FFN__input_0: USER, 1 op",
        "  subgraph_FFN__FFN_Linear_l1__ret_1: CPU, 21 ops"]
    assert snapshot(str(project / "quantize_result")) == before


ROUTES = ("the two routes to batch 4: vai_c_xir --options '{}' (Xilinx's DPUCADF8H README; compile.sh passes it "
          "for a batch-1 xmodel, though one user found it did not take with Vitis AI 2.0, Vitis-AI #683)".format(
              INPUT_SHAPE_4), "or " + DEPLOY_4)


def test_no_dpu_subgraph_of_a_batch_1_xmodel_names_both_routes(project_1):
    """What the DPUCADF8H compiler of Vitis AI 1.4 to 2.5 makes of a batch-1 xmodel (#518), if the
    --options input_shape did not take (#683): both routes to batch 4 are named."""
    run = run_compile(project_1, *compile_args(project_1), compiler="ok", compiled=ON_CPU)
    assert argv_of_the_compiler(project_1)[-2:] == ["--options", INPUT_SHAPE_4]
    assert_fails(run, 1, str(project_1 / "out" / "NET.xmodel"), "no DPU subgraph",
                 "the xmodel has batch 1, and DPUCADF8H's compiler does that with any batch but 4", *ROUTES)
    run = run_compile(project_1, *compile_args(project_1), compiler="ok", compiled=ON_CPU,
                      env={"COMPILE_OPTIONS": '{"input_shape": "1,2"}'})
    assert argv_of_the_compiler(project_1)[-2:] == ["--options", '{"input_shape": "1,2"}']
    assert_fails(run, 1, *ROUTES, " (this run's COMPILE_OPTIONS gave input_shape \"1,2\")")


def test_no_dpu_subgraph_of_a_batch_1_xmodel_is_explained_by_the_batch(project):
    """The same check as a command of its own."""
    run = run_script("dpu.preflight", BATCH_1_XMODEL, "DPUCADF8H", "--compiled", ON_CPU, cwd=str(project))
    assert_fails(run, 1, ON_CPU, "no DPU subgraph", "the xmodel has batch 1, and DPUCADF8H's compiler does that "
                 "with any batch but 4", *ROUTES)
    # Another DPU: no batch to blame.
    run = run_script("dpu.preflight", BATCH_1_XMODEL, "DPUCZDX8G", "--compiled", ON_CPU, cwd=str(project))
    assert_fails(run, 1, "no DPU subgraph", "see the compiler's output for why")
    assert "batch" not in run.stderr


def test_subgraph_tree_of_the_golden_files():
    for path, device in ((ON_DPU, "DPU"), (ON_CPU, "CPU")):
        assert preflight.device_subgraphs(read_graph(path), path) == [
            ("subgraph_FFN__input_0", "USER", 1), ("subgraph_FFN__FFN_Linear_l1__ret_1", device, 21)]


def test_ops_of_nested_subgraphs_are_counted_once():
    graph = read_graph(ON_DPU)
    dpu = graph.subg_root.subg_child[1]
    names = list(dpu.op_name)
    leaf = dpu.subg_child.add(subgraph_name="inner")
    leaf.op_name.extend(names[:5] + ["extra_op"])
    assert preflight.device_subgraphs(graph, "g")[1] == ("subgraph_FFN__FFN_Linear_l1__ret_1", "DPU", 22)


def truncated(path):
    data = open(ON_DPU, "rb").read()
    path.write_bytes(data[:len(data) // 2])


def no_device(path):
    graph = read_graph(ON_DPU)
    del graph.subg_root.subg_child[1].subg_attr["device"]
    path.write_bytes(serialize_graph(graph))


@pytest.mark.parametrize("write, fragment", [
    (truncated, "not a valid xmodel (protobuf parse error)"),
    (lambda path: path.write_bytes(b"\xff\xfe not an xmodel"), "not a valid xmodel"),
    (lambda path: path.write_bytes(b""), "is empty, not an xmodel"),
    (lambda path: shutil.copy(BATCH_1_XMODEL, str(path)), "has no subgraph tree"),
    (no_device, "subgraph subgraph_FFN__FFN_Linear_l1__ret_1 has no string attribute device"),
])
def test_an_unreadable_compiled_xmodel_fails(project, write, fragment):
    compiled = project / "written.xmodel"
    write(compiled)
    before = snapshot(str(project / "quantize_result"))
    run = run_compile(project, *compile_args(project), compiler="ok", compiled=compiled)
    assert_fails(run, 1, str(project / "out" / "NET.xmodel"), fragment)
    assert snapshot(str(project / "quantize_result")) == before
    assert "compiled:" not in run.stdout


def test_a_missing_compiled_xmodel(project):
    missing = project / "none.xmodel"
    run = run_script("dpu.preflight", BATCH_1_XMODEL, "DPUCADF8H", "--compiled", missing, cwd=str(project))
    assert_fails(run, 2, str(missing), "xmodel file not found")


def test_dpu_name_resolves_to_its_arch_json(tmp_path):
    for board in ("U200", "U250"):
        (tmp_path / "DPUCADF8H" / board).mkdir(parents=True)
    (tmp_path / "DPUCZDX8G" / "ZCU102").mkdir(parents=True)
    (tmp_path / "DPUCZDX8G" / "ZCU102" / "arch.json").write_text("{}")
    root = str(tmp_path)
    assert preflight.resolve_arch("DPUCADF8H", root) == os.path.join(root, "DPUCADF8H", "U250", "arch.json")
    assert preflight.resolve_arch("DPUCZDX8G", root) == os.path.join(root, "DPUCZDX8G", "ZCU102", "arch.json")
    assert preflight.resolve_arch("my/arch.json", root) == "my/arch.json"
    (tmp_path / "DPUCZDX8G" / "ZCU104").mkdir()
    (tmp_path / "DPUCZDX8G" / "ZCU104" / "arch.json").write_text("{}")
    with pytest.raises(InputError, match=r"has 2 boards \(ZCU102, ZCU104\)"):
        preflight.resolve_arch("DPUCZDX8G", root)
    with pytest.raises(InputError, match=r"no such DPU .*\(it has, closest first: DPUCADF8H, DPUCZDX8G\)"):
        preflight.resolve_arch("DPUCAHX8H", root)
    # Inside the docker its folder decides, not the list of names
    with pytest.raises(InputError, match=r"DPUCZDX8: no such DPU .*\(it has, closest first: DPUCZDX8G, DPUCADF8H\)"):
        preflight.resolve_arch("DPUCZDX8", root)


def test_no_compiler_runs_the_checks_with_the_defaults(project):
    run = run_compile(project)
    # The expected end outside the docker: said as such, not as an error.
    assert_fails(run, 3, "vai_c_xir not found (expected outside the Vitis AI docker)",
                 "conda activate vitis-ai-pytorch")
    assert run.stderr.startswith("compile.sh: vai_c_xir not found") and "error" not in run.stderr
    assert "the checks above ran (also in compile_output/preflight.txt)" in run.stderr
    findings = finding_lines(run.stdout)
    assert [line.split(":")[0] for line in findings] == ["ok", "ok", "skip", "ok", "ok", "ok", "ok"], run.stdout
    assert "quantize_result/FFN_int.xmodel parses" in findings[0]
    assert findings[2].startswith("skip: arch DPUCADF8H: /opt/vitis_ai/compiler/arch is not on this machine")
    # The checks that ran are on disk, written aside and renamed: nothing else in the folder.
    assert os.listdir(str(project / "compile_output")) == ["preflight.txt"]
    assert (project / "compile_output" / "preflight.txt").read_text() == run.stdout


def test_a_failed_preflight_keeps_its_report(project):
    xmodel = project / "no_fix_point.xmodel"
    write_changed_graph(xmodel, lambda ops: ops["FFN__input_0_fix"].op_attr.pop("fix_point"))
    (project / "out").mkdir()
    (project / "out" / "preflight.txt").write_text("an earlier report\n")
    run = run_compile(project, *compile_args(project, xmodel=xmodel), compiler="ok")
    assert_refused(run, "fix_point")
    report = (project / "out" / "preflight.txt").read_text()
    assert report == run.stdout and "FAIL: {}".format(xmodel) in report
    assert os.listdir(str(project / "out")) == ["preflight.txt"]


def test_an_output_dir_that_cannot_be_made_is_refused_without_compiler(project):
    (project / "afile").write_text("")
    run = run_compile(project, project / "quantize_result" / "FFN_int.xmodel", "DPUCADF8H", "NET", project / "afile")
    assert_refused(run, "afile: cannot create the output folder")


def test_pdb_prompt_ends_because_stdin_is_closed(project):
    read_end, write_end = os.pipe()     # a stdin that never ends, unless compile.sh closes it
    try:
        start = time.time()
        run = run_compile(project, *compile_args(project), compiler="pdb", stdin=read_end)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert time.time() - start < 10     # COMPILE_TIMEOUT is 20 s
    assert_fails(run, 4, "(Pdb) prompt", "breakpoint left inside this compiler", "not caused by the model",
                 "Vitis AI 1.4 to 2.5")


def test_pdb_prompt_ignoring_eof_is_stopped_when_the_prompt_shows(project):
    run = run_compile(project, *compile_args(project), compiler="pdb_ignoring_eof",
                      env={"COMPILE_TIMEOUT": "600"})
    ended = time.time()
    assert_fails(run, 4, "(Pdb) prompt", "Vitis AI 1.4 to 2.5")
    prompted = float((project / "argv.txt").read_text())
    assert ended - prompted < 2, ended - prompted       # not at the 600 s limit
    assert "(Pdb)" in run.stdout                        # the compiler's output is shown up to its prompt


def test_a_hung_compiler_is_stopped(project):
    run = run_compile(project, *compile_args(project), compiler="hang", env={"COMPILE_TIMEOUT": "0.5"})
    assert_fails(run, 4, "did not finish within 0.5 s", "COMPILE_TIMEOUT")


def test_ctrl_c_stops_the_compiler(project):
    command, environment = compile_command(project, *compile_args(project), compiler="hang_recording_its_pid")
    def own_group_with_default_sigint():
        # A process group of its own, as under a terminal, where Ctrl-C signals the whole group;
        # SIGINT as a user's shell has it (tests started in the background inherit it ignored,
        # and bash cannot trap a signal ignored on entry).
        os.setpgrp()
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    run = subprocess.Popen(command, cwd=str(project), env=environment, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, preexec_fn=own_group_with_default_sigint)
    pid_file = project / "argv.txt"
    deadline = time.time() + 10
    while not (pid_file.exists() and pid_file.read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)     # for compile.sh to set its trap
    os.killpg(run.pid, signal.SIGINT)
    _, stderr = run.communicate(timeout=10)
    assert run.returncode == 130 and "interrupted; vai_c_xir stopped" in stderr, stderr
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):     # the compiler has gone too
        os.kill(int(pid_file.read_text()), 0)


@pytest.mark.parametrize("compiler, fragments", [
    ("no_front_end", ["NO FRONT END SPECIFIED", "use DPUCADF8H on U200/U250"]),
    ("shift_refused", ["refused a layer's shift_bias or shift_cut", "legalization"]),
    ("crash", ["vai_c_xir failed with exit code 7"]),
    ("no_output", ["ended without error but did not write", "NET.xmodel"]),
])
def test_compiler_failures_are_explained(project, compiler, fragments):
    run = run_compile(project, *compile_args(project), compiler=compiler)
    assert_fails(run, 1, *fragments)
    assert "vai_c_xir.log" in run.stderr


def test_an_output_of_an_earlier_run_does_not_count(project):
    (project / "out").mkdir()
    (project / "out" / "NET.xmodel").write_text("earlier")
    run = run_compile(project, *compile_args(project), compiler="no_output")
    assert_fails(run, 1, "did not write")


# ---------------------------------------------------------------- pre-flight failures

def assert_refused(run, *fragments):
    """Exit 2 before the compiler ran."""
    assert_fails(run, 2, *fragments)
    assert "vai_c_xir -x" not in run.stdout


@pytest.mark.parametrize("arch", ["DPUCADX8G", "DPUCADX8G/ALVEO/arch.json"])
def test_dpucadx8g_is_refused(project, arch):
    if "/" in arch:
        arch = project / arch
        arch.parent.mkdir(parents=True)
        arch.write_text("{}")
    run = run_compile(project, *compile_args(project, arch=arch), compiler="ok")
    assert_refused(run, str(arch), "NO FRONT END SPECIFIED", "no PyTorch/XIR front end", "DPUCADF8H")


def test_missing_arch_file(project):
    arch = project / "missing" / "arch.json"
    assert_refused(run_compile(project, *compile_args(project, arch=arch), compiler="ok"),
                   str(arch), "arch file not found")


# ids: pytest 8 puts the test id into an environment variable, too long for a 500 KB value
@pytest.mark.parametrize("text", ["[" * 100000, '{"target":' * 50000], ids=["lists", "objects"])
def test_deeply_nested_arch_file(project, text):
    arch = project / "arch" / "nested.json"
    arch.write_text(text)
    assert_refused(run_compile(project, *compile_args(project, arch=arch), compiler="ok"),
                   str(arch), "not a JSON arch file (nested too deeply)")
    with pytest.raises(InputError, match=r"nested too deeply"):
        preflight.read_arch(str(arch))


@pytest.mark.parametrize("damage", ["truncated", "not protobuf"])
def test_broken_xmodel(project, damage):
    xmodel = project / "broken.xmodel"
    data = open(os.path.join(GOLDEN_RESULT, "FFN_int.xmodel"), "rb").read()
    xmodel.write_bytes(data[:len(data) // 2] if damage == "truncated" else b"\xff\xfe not an xmodel")
    run = run_compile(project, *compile_args(project, xmodel=xmodel), compiler="ok")
    assert_refused(run, str(xmodel))
    assert "skip: integer reference: the xmodel failed its checks" in run.stdout


def write_changed_graph(path, change):
    graph = read_graph(os.path.join(GOLDEN_RESULT, "FFN_int.xmodel"))
    change({op.op_name: op for op in graph.op_node})
    path.write_bytes(serialize_graph(graph))


def write_arch(project, relative, content):
    arch = project / relative
    arch.parent.mkdir(parents=True, exist_ok=True)
    arch.write_text(json.dumps(content))
    return arch


def test_dpucadf8h_takes_batch_1_by_its_dpu_name_outside_the_docker(project_1):
    run = run_compile(project_1)
    assert run.returncode == 3, run.stdout + run.stderr
    assert "ok: batch 1: vai_c_xir gets --options '{}', the batch DPUCADF8H compiles".format(INPUT_SHAPE_4) \
        in run.stdout
    assert "skip: arch DPUCADF8H: /opt/vitis_ai/compiler/arch is not on this machine" in run.stdout


def test_other_dpus_compile_batch_1_only(project):
    arch = write_arch(project, "arch/zcu102.json", {"target": "DPUCZDX8G_ISA1_B4096"})
    run = run_compile(project, *compile_args(project, arch=arch), compiler="ok")
    assert_refused(run, str(project / "quantize_result" / "FFN_int.xmodel"),
                   "batch 4, but this DPU compiles batch 1 only", "deploy at batch 1:", "--deploy_batch 1")
    args = compile_args(project, xmodel=BATCH_1_XMODEL, arch=arch)
    run = run_compile(project, *args, compiler="ok")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok: batch 1, the batch this DPU's compiler takes" in run.stdout
    assert argv_of_the_compiler(project) == ["-x", BATCH_1_XMODEL, "-a", str(arch), "-n", "NET", "-o", str(args[3])]


def test_target_table():
    assert dpu_targets.by_name("/opt/vitis_ai/compiler/arch/DPUCADF8H/U250/arch.json") is dpu_targets.DPUCADF8H
    assert dpu_targets.by_name("dpucadf8h_isa0") is dpu_targets.DPUCADF8H
    assert dpu_targets.by_name("DPUCZDX8G_ISA1_B4096") is None
    assert dpu_targets.by_fingerprint("0x700000000000000") is dpu_targets.DPUCADF8H
    assert dpu_targets.by_fingerprint(0x700000000000000) is dpu_targets.DPUCADF8H
    assert dpu_targets.by_fingerprint("0x1000020F6014407") is None
    assert dpu_targets.by_fingerprint("not a number") is None
    assert [dpu_targets.required_batch(t) for t in (dpu_targets.DPUCADF8H, dpu_targets.DPUCADX8G, None)] == [4, 1, 1]
    assert dpu_targets.DPUCADF8H.batch_option and not dpu_targets.DPUCADX8G.batch_option
    assert dpu_targets.batch_options(dpu_targets.DPUCADF8H, 1, 2) == {"input_shape": "4,2"}
    assert dpu_targets.batch_options(dpu_targets.DPUCADF8H, 4, 2) == {}
    assert dpu_targets.batch_options(None, 1, 2) == {}
    assert "DPUCADF8H" in dpu_targets.KNOWN_DPUS and "DPUCZDX8G" in dpu_targets.KNOWN_DPUS
    assert dpu_targets.DPUCADF8H.arch_path() == "/opt/vitis_ai/compiler/arch/DPUCADF8H/U250/arch.json"


def test_the_arch_json_content_wins_over_its_path(tmp_path):
    arch = tmp_path / "DPUCADF8H" / "U250" / "arch.json"
    arch.parent.mkdir(parents=True)
    arch.write_text("{}")
    assert preflight.read_arch(str(arch), dpu_targets.by_name(str(arch))) is dpu_targets.DPUCADF8H
    arch.write_text(json.dumps({"target": "DPUCZDX8G_ISA1_B4096"}))
    assert preflight.read_arch(str(arch), dpu_targets.by_name(str(arch))) is None
    arch.write_text(json.dumps({"fingerprint": "0x700000000000000"}))
    assert preflight.read_arch(str(arch), None) is dpu_targets.DPUCADF8H


def test_missing_dpucadf8h_arch_names_the_releases_that_have_it(project):
    """In a Vitis AI 3.x docker vai_c_xir exists but DPUCADF8H's arch folder does not."""
    run = run_compile(project, *compile_args(project, arch="DPUCADF8H"), compiler="ok")
    assert_refused(run, "/opt/vitis_ai/compiler/arch/DPUCADF8H/U250/arch.json: arch file not found",
                   "DPUCADF8H's arch.json ships only in Vitis AI 1.3 to 2.5 (dropped in 3.0)",
                   "xilinx/vitis-ai-cpu", "1.4.1.978")


def test_missing_fix_attribute(project):
    xmodel = project / "no_fix_point.xmodel"
    write_changed_graph(xmodel, lambda ops: ops["FFN__input_0_fix"].op_attr.pop("fix_point"))
    assert_refused(run_compile(project, *compile_args(project, xmodel=xmodel), compiler="ok"),
                   str(xmodel), "FFN__input_0_fix has no attribute fix_point")


def test_illegal_shifts_name_the_layer_and_positions(project):
    model = read_xmodel(os.path.join(GOLDEN_RESULT, "FFN_int.xmodel"))
    model.layers[1].fp_w, model.layers[1].fp_b = 12, 0     # shift_bias 6 + 12 - 0 = 18
    model.layers[2].fp_out = 20                             # shift_cut 5 + 7 - 20 = -8
    xmodel = project / "illegal.xmodel"
    write_xmodel(model, str(xmodel))
    run = run_compile(project, *compile_args(project, xmodel=xmodel), compiler="ok")
    assert_refused(run, str(xmodel), "l2: shift_bias 18 outside [-3, 16] (i=6 w=12 b=0 o=5)",
                   "(and 1 more failed check above)")
    assert "FAIL: {}: l3: shift_cut -8 outside [0, 16] (i=5 w=7 b=8 o=20)".format(xmodel) in run.stdout


def test_data_that_does_not_fit_the_xmodel(project):
    data = os.path.join(GOLDEN_ROOT, "p3_random_in4", "calib.npy")
    run = run_compile(project, *compile_args(project), compiler="ok", env={"COMPILE_DATA": data})
    assert_refused(run, data, "has 5 columns, expected 3", "takes 2 features", "COMPILE_DATA")


def test_default_data_that_does_not_fit_the_xmodel_names_compile_data(project):
    """An --input_size 4 xmodel checked against the default data/test.npy of 2 features."""
    result = os.path.join(GOLDEN_ROOT, "p3_random_in4", "expected", "quantize_result")
    xmodel = project / "in4" / "FFN_int.xmodel"
    xmodel.parent.mkdir()
    model = read_xmodel(os.path.join(result, "FFN_int.xmodel"))
    model.batch = 4
    write_xmodel(model, str(xmodel))
    run = run_compile(project, *compile_args(project, xmodel=xmodel), compiler="ok")
    assert_refused(run, "data/test.npy: has 3 columns, expected 5", "takes 4 features",
                   "pass the data it was calibrated on", "COMPILE_DATA=FILE.npy")


def test_a_differing_deploy_dump_fails(project):
    dump = project / "quantize_result" / "deploy_check_data_int" / "FFN" / "FFN__FFN_ret_7_fix.bin"
    dump.write_bytes(bytes([dump.read_bytes()[0] ^ 1]) + dump.read_bytes()[1:])
    run = run_compile(project, *compile_args(project), compiler="ok")
    assert_refused(run, "deploy check: 1 of 22 tensors differ", "FFN__FFN_ret_7_fix.bin")


def test_a_difference_in_deploy_row_3_fails(project):
    dump = project / "quantize_result" / "deploy_check_data_int" / "FFN" / "FFN__FFN_Linear_l3__ret_fix.bin"
    q = bytearray(dump.read_bytes())
    q[3] ^= 1
    dump.write_bytes(bytes(q))
    run = run_compile(project, *compile_args(project), compiler="ok")
    assert_refused(run, "deploy check: 1 of 22 tensors differ", "FFN__FFN_Linear_l3__ret_fix.bin: 1 of 4 values")


def test_data_without_the_deploy_row_skips_the_deploy_check(project):
    data = project / "data" / "shifted.npy"
    np.save(str(data), np.load(str(project / "data" / "test.npy"))[1:])
    run = run_compile(project, *compile_args(project), compiler="ok", env={"COMPILE_DATA": data})
    assert run.returncode == 0, run.stderr
    assert "skip: deploy check: rows 0 to 3 of {} are not the deploy rows".format(data) in run.stdout


def test_data_with_fewer_rows_than_the_batch_skips_the_deploy_check(project):
    data = project / "data" / "three.npy"
    np.save(str(data), np.load(str(project / "data" / "test.npy"))[:3])
    run = run_compile(project, *compile_args(project), compiler="ok", env={"COMPILE_DATA": data})
    assert run.returncode == 0, run.stderr
    assert "skip: deploy check: {}: has 3 rows, fewer than the xmodel's batch 4".format(data) in run.stdout


def test_a_python_without_the_packages_says_how_to_set_up(project, tmp_path):
    """A checkout without .venv: compile.sh falls back to python3, here one without numpy or protobuf."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy(COMPILE, str(checkout))
    for name in ("dpu", "flow"):
        os.symlink(os.path.join(REPO, name), str(checkout / name))
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "python3").write_text('#!/bin/sh\nexec "{}" -S "$@"\n'.format(sys.executable))   # -S: no site-packages
    (bare / "python3").chmod(0o755)
    command, environment = compile_command(project)
    environment.pop("PY")
    environment["PATH"] = str(bare) + os.pathsep + environment["PATH"]
    run = subprocess.run(["bash", str(checkout / "compile.sh")], cwd=str(project), env=environment,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert_fails(run, 2, "{} cannot import".format(sys.executable), "No module named", "make install",
                 "pip install -r requirements.txt")


def test_a_missing_python(project):
    assert_refused(run_compile(project, env={"PY": "no-such-python"}), "no Python 'no-such-python'",
                   "make install")


def test_bad_timeout(project):
    assert_refused(run_compile(project, compiler="ok", env={"COMPILE_TIMEOUT": "0"}), "COMPILE_TIMEOUT '0'")


def engine_findings(xmodel, target):
    report = preflight.Report()
    preflight.check_engines(report, xmodel, read_xmodel(xmodel), target)
    return report


LAYERS = os.path.join(REPO, "tests", "fixtures", "golden", "layers")


@pytest.mark.parametrize("case, activation", [("V1", "leaky-relu"), ("V3b", "relu6"), ("V0", "relu")])
def test_dpucadf8h_engines_take_the_activations(case, activation, capsys):
    from dpu import targets as dpu_targets
    folder = os.path.join(LAYERS, case, "expected", "quantize_result")
    xmodel = os.path.join(folder, next(f for f in os.listdir(folder) if f.endswith(".xmodel")))
    report = engine_findings(xmodel, dpu_targets.DPUCADF8H)
    assert report.failures == []
    assert "ok: activations {}: DPUCADF8H's engines have them".format(activation) in capsys.readouterr().out


def test_an_activation_without_an_engine_fails_and_scale_is_left_to_the_compiler(capsys):
    import dataclasses

    from dpu import targets as dpu_targets
    xmodel = os.path.join(LAYERS, "V5", "expected", "quantize_result", "FFN_V5_int.xmodel")
    assert engine_findings(xmodel, dpu_targets.DPUCADF8H).failures == []
    out = capsys.readouterr().out
    assert "skip: scale ops of bn1, bn2 (BatchNorm1d, not folded by the quantizer): the compiler decides" in out
    narrow = dataclasses.replace(dpu_targets.DPUCADF8H, activations=("leaky-relu",))
    assert engine_findings(xmodel, narrow).failures == [
        "{}: DPUCADF8H has no engine for relu (it fuses leaky-relu)".format(xmodel)]
    assert "skip: activations relu: the engines of this DPU are not in the table" in \
        (engine_findings(xmodel, None), capsys.readouterr().out)[1]
