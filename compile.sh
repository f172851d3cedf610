#!/usr/bin/env bash
# Stage 4: compile the quantized network for a DPU with vai_c_xir, after pre-flight checks.
#
# Usage: bash compile.sh [XMODEL] [ARCH] [NET_NAME] [OUTPUT_DIR]
#        bash compile.sh --help        (or -h: this text)
#   XMODEL      the quantizer's deploy output (default quantize_result/FFN_int.xmodel)
#   ARCH        an arch.json path, or a DPU name looked up in the Vitis AI docker as
#               /opt/vitis_ai/compiler/arch/<DPU>/<board>/arch.json: DPUCADF8H uses U250,
#               another DPU its only board (default DPUCADF8H). A name that is no DPU's is
#               refused with the known names, closest first. DPUCADX8G is refused: it has no
#               PyTorch front end. dpu/targets.py: what each DPU needs.
#   NET_NAME    name of the compiled network (default FFN_qd)
#   OUTPUT_DIR  gets preflight.txt (the pre-flight findings, also without vai_c_xir), then
#               NET_NAME.xmodel, meta.json, md5sum.txt and the compiler's output in
#               vai_c_xir.log (default compile_output)
# Environment:
#   COMPILE_DATA     .npy for the integer DPU reference (default data/test.npy if present):
#                    the data the xmodel was calibrated on, its first rows the deploy rows
#   COMPILE_OPTIONS  a JSON object passed to vai_c_xir as --options, merged with the
#                    input_shape below (yours wins if it has one), e.g.
#                    COMPILE_OPTIONS='{"input_shape": "4,2"}' (default: none)
#   COMPILE_TIMEOUT  time limit of vai_c_xir in seconds (default 600)
#   PY               the Python for the pre-flight checks (default: python inside the docker,
#                    where vai_c_xir is, else .venv/bin/python, else python3)
#
# The pre-flight (python -m dpu.preflight) first checks the xmodel (supported ops, fix
# attributes), every layer's shift_cut and shift_bias, the arch, the batch the target's
# compiler takes, and runs the integer DPU reference on the data (MSE, and the quantizer's
# deploy-check dumps); one line per finding, kept in OUTPUT_DIR/preflight.txt.
# The batch: DPUCADF8H's compiler (Vitis AI 1.4 to 2.5) compiles batch 4. A batch-1 xmodel,
# as vai_q_pytorch exports it, gets vai_c_xir --options '{"input_shape": "4,N"}' (N: its
# inputs), the route of Xilinx's DPUCADF8H README; a batch-4 export (--deploy_batch 4) is
# compiled as it is. Other DPUs: batch 1.
# vai_c_xir then runs with stdin closed and a time limit, and is stopped as soon as it
# shows a (Pdb) prompt: the DPUCADF8H compiler of Vitis AI 1.3 stops at a leftover
# breakpoint. Its output NET_NAME.xmodel is read back: its subgraphs are printed (which
# run on the DPU, which stayed on the CPU), and one with no DPU subgraph is a failure.
#
# Exit codes:
#   0  compiled: OUTPUT_DIR/NET_NAME.xmodel written, with a DPU subgraph
#   1  vai_c_xir failed, wrote no OUTPUT_DIR/NET_NAME.xmodel, an unreadable one, or one
#      with no DPU subgraph (every op left on the CPU)
#   2  bad input or a failed pre-flight check (also: no Python with the project's packages)
#   3  no vai_c_xir on PATH (outside the Vitis AI docker): the checks ran, nothing compiled
#   4  vai_c_xir stopped at a (Pdb) prompt or ran out of time
#   130  interrupted (Ctrl-C, SIGTERM)
set -u

EXIT_COMPILER_FAILED=1
EXIT_BAD_INPUT=2
EXIT_NO_COMPILER=3
EXIT_HUNG=4
EXIT_INTERRUPTED=130

usage() {  # the comment block above, without its '#'
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}"
}

for arg in "$@"; do
    case $arg in
        -h|--help) usage; exit 0 ;;
    esac
done

XMODEL=${1:-quantize_result/FFN_int.xmodel}
ARCH=${2:-DPUCADF8H}
NET_NAME=${3:-FFN_qd}
OUTPUT_DIR=${4:-compile_output}
TIMEOUT=${COMPILE_TIMEOUT:-600}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

fail() {  # fail EXIT_CODE MESSAGE...: the words as one line on stderr
    local code=$1
    shift
    echo "compile.sh: error: $*" >&2
    exit "$code"
}

(( $# <= 4 )) || fail $EXIT_BAD_INPUT "expected at most XMODEL ARCH NET_NAME OUTPUT_DIR, got $# words" \
    "(bash compile.sh --help)"
for arg in "$@"; do
    [[ $arg != -* ]] || fail $EXIT_BAD_INPUT "unknown option '$arg': compile.sh takes the words XMODEL ARCH" \
        "NET_NAME OUTPUT_DIR and its settings from the environment (bash compile.sh --help)"
done
[[ $NET_NAME =~ ^[A-Za-z0-9_.-]+$ ]] || fail $EXIT_BAD_INPUT "NET_NAME '$NET_NAME': letters, digits, _ . - only"
# 0 would switch the time limit off.
[[ $TIMEOUT =~ ^[0-9]*\.?[0-9]+$ && ! $TIMEOUT =~ ^[0.]+$ ]] ||
    fail $EXIT_BAD_INPUT "COMPILE_TIMEOUT '$TIMEOUT': expected a positive number of seconds"

have_compiler=
command -v vai_c_xir >/dev/null 2>&1 && have_compiler=yes
if [[ -z ${PY:-} ]]; then
    if [[ -n $have_compiler ]]; then PY=python          # the docker's conda environment
    elif [[ -x $HERE/.venv/bin/python ]]; then PY=$HERE/.venv/bin/python
    else PY=python3
    fi
fi
command -v "$PY" >/dev/null 2>&1 || fail $EXIT_BAD_INPUT "no Python '$PY': set up the environment with" \
    "'make install' (then .venv/bin/python is used), or inside the Vitis AI docker" \
    "'pip install -r requirements.txt' (or set PY)"

# The checks live in the dpu package (dpu/preflight.py), run from this checkout; unbuffered,
# so that their lines show as they come through tee.
run_preflight=(env PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 "$PY" -m dpu.preflight)
# COMPILE_OPTIONS goes to every call: the first refuses a value that is not a JSON object.
options_arg=()
[[ -n ${COMPILE_OPTIONS:-} ]] && options_arg=(--compile_options "$COMPILE_OPTIONS")
preflight=("${run_preflight[@]}" "$XMODEL" "$ARCH" ${options_arg[@]+"${options_arg[@]}"})
[[ -n ${COMPILE_DATA:-} ]] && preflight+=(--data "$COMPILE_DATA")
[[ -z $have_compiler ]] && preflight+=(--no_compiler)

# The findings go to OUTPUT_DIR/preflight.txt too: written aside, renamed into place once
# the checks have run (passed or failed); a run stopped before any finding (a bad
# COMPILE_OPTIONS, an interruption) leaves an earlier report, and no new folder.
made_output_dir=
if [[ ! -d $OUTPUT_DIR ]]; then
    mkdir -p "$OUTPUT_DIR" 2>/dev/null || fail $EXIT_BAD_INPUT "$OUTPUT_DIR: cannot create the output folder"
    made_output_dir=yes
fi
report=$OUTPUT_DIR/preflight.txt
report_tmp=$OUTPUT_DIR/.preflight.txt.$$
trap 'rm -f "$report_tmp"' EXIT
: 2>/dev/null >"$report_tmp" || fail $EXIT_BAD_INPUT "$report: cannot write the pre-flight report"
# tee -i: Ctrl-C reaches the checks, which end with their own line, and not tee.
"${preflight[@]}" | tee -i "$report_tmp"
checked=${PIPESTATUS[0]}
if (( checked == 0 || checked == EXIT_BAD_INPUT )) && [[ -s $report_tmp ]]; then
    mv -f "$report_tmp" "$report" 2>/dev/null || fail $EXIT_BAD_INPUT "$report: cannot write the pre-flight report"
else
    rm -f "$report_tmp"
    [[ -n $made_output_dir ]] && rmdir "$OUTPUT_DIR" 2>/dev/null
fi
(( checked == 0 )) || exit $checked    # its one-line error is printed; 2 for a failed check

if [[ -z $have_compiler ]]; then  # the expected end on a plain machine, hence no "error:"
    echo "compile.sh: vai_c_xir not found (expected outside the Vitis AI docker): the checks above ran" \
        "(also in $report); compiling needs the docker (conda activate vitis-ai-pytorch)" >&2
    exit $EXIT_NO_COMPILER
fi

# The arch.json path, then the --options JSON (an empty line: none), one line each.
printed=$("${run_preflight[@]}" "$XMODEL" "$ARCH" --print_arch --print_compile_options \
    ${options_arg[@]+"${options_arg[@]}"}) || exit
arch_json=${printed%%$'\n'*}
compile_options=
[[ $printed == *$'\n'* ]] && compile_options=${printed#*$'\n'}
compiler_args=(-x "$XMODEL" -a "$arch_json" -n "$NET_NAME" -o "$OUTPUT_DIR")
shown_options=
if [[ -n $compile_options ]]; then
    compiler_args+=(--options "$compile_options")
    shown_options=" --options '$compile_options'"
fi
log=$OUTPUT_DIR/vai_c_xir.log
# Created first, for tail below to find it; the compiler then appends to it.
: 2>/dev/null >"$log" || fail $EXIT_BAD_INPUT "$log: cannot write the compiler's log"
net_xmodel=$OUTPUT_DIR/$NET_NAME.xmodel
# An earlier run's file may be there: only one that this run (re)wrote counts.
before=$(stat -c %y "$net_xmodel" 2>/dev/null)

echo "vai_c_xir -x $XMODEL -a $arch_json -n $NET_NAME -o $OUTPUT_DIR$shown_options (time limit ${TIMEOUT} s, log $log)"
# timeout runs the compiler in a process group of its own, so that the time limit ends
# every process it started, and out of reach of Ctrl-C: the trap passes that on.
# The compiler writes the log itself and tail shows it, so the log is complete once it ends.
timeout -k 10 "$TIMEOUT" vai_c_xir "${compiler_args[@]}" </dev/null >>"$log" 2>&1 &
compiler=$!
trap 'kill -TERM $compiler 2>/dev/null; wait $compiler; fail $EXIT_INTERRUPTED "interrupted; vai_c_xir stopped"' INT TERM
tail -n +1 -s 0.1 -f --pid=$compiler "$log" &
# A (Pdb) prompt waits for a command forever, or until stdin ends; a compiler that ignores
# the end of stdin is stopped as soon as its prompt shows, not at the time limit.
while kill -0 $compiler 2>/dev/null; do
    if grep -qF '(Pdb)' "$log"; then
        kill -TERM $compiler 2>/dev/null
        break
    fi
    sleep 0.2
done
wait $compiler
status=$?
wait    # for tail to show the rest of the log
trap - INT TERM
after=$(stat -c %y "$net_xmodel" 2>/dev/null)

if grep -qF '(Pdb)' "$log"; then
    fail $EXIT_HUNG "vai_c_xir stopped at a (Pdb) prompt: a debugger breakpoint left inside this compiler" \
        "release (Vitis AI 1.3 DPUCADF8H, gen_param_ddr_demo.py), not caused by the model;" \
        "compile with Vitis AI 1.4 to 2.5 (see $log)"
fi
if (( status == 124 || status == 137 )); then   # 137: killed 10 s after the time limit
    fail $EXIT_HUNG "vai_c_xir did not finish within ${TIMEOUT} s and was stopped" \
        "(COMPILE_TIMEOUT sets the limit; see $log)"
fi
if (( status == 0 )) && [[ -n $after && $after != "$before" ]]; then
    # Its subgraphs, and exit code 1 with one line if none is on the DPU or the file is unreadable.
    "${run_preflight[@]}" "$XMODEL" "$ARCH" --compiled "$net_xmodel" ${options_arg[@]+"${options_arg[@]}"} ||
        exit $EXIT_COMPILER_FAILED
    echo "compiled: $net_xmodel"
    exit 0
fi
if grep -q 'NO FRONT END SPECIFIED' "$log"; then
    fail $EXIT_COMPILER_FAILED "vai_c_xir: NO FRONT END SPECIFIED: the arch's DPU (DPUCADX8G) has no" \
        "PyTorch/XIR front end; use DPUCADF8H on U200/U250 (see $log)"
elif grep -qE 'Invalid shift_bias|Check Failed: shift_cut' "$log"; then
    fail $EXIT_COMPILER_FAILED "vai_c_xir refused a layer's shift_bias or shift_cut: this compiler's range" \
        "is narrower than the pre-flight check's; the fix positions come from the quantizer's DPU" \
        "legalization (see $log)"
elif (( status != 0 )); then
    fail $EXIT_COMPILER_FAILED "vai_c_xir failed with exit code $status (see $log)"
fi
fail $EXIT_COMPILER_FAILED "vai_c_xir ended without error but did not write $net_xmodel (see $log)"
