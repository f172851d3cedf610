"""Pre-flight checks of compile.sh: what can be checked before vai_c_xir runs,
and the check of what it wrote.

    python -m dpu.preflight XMODEL ARCH [--data FILE.npy] [--no_compiler] [--compile_options JSON]
    python -m dpu.preflight XMODEL ARCH --print_arch [--print_compile_options] [--compile_options JSON]
    python -m dpu.preflight XMODEL ARCH --compiled COMPILED_XMODEL [--compile_options JSON]

Prints one line per finding: "ok: ...", "skip: ..." (cannot be checked here)
or "FAIL: ..." naming the file. Any FAIL ends in one error line on stderr and
exit code 2. The checks:
- the xmodel parses into a chain of the ops the DPU flow takes (dpu/xmodel.py);
- every Linear layer's shift_cut and shift_bias lie in the DPU ranges (dpu/shifts.py);
- the arch.json exists and is not DPUCADX8G's; ARCH may also be a DPU name,
  looked up in the Vitis AI docker's arch folder (a name that is not a DPU's is refused,
  the known names closest first). With --no_compiler (outside the docker) a missing
  docker arch folder is a skip, not a failure;
- the xmodel's batch is one the target's compiler takes (dpu/targets.py): for
  DPUCADF8H batch 4 as it is, or batch 1, which vai_c_xir then gets as batch 4 with
  --options '{"input_shape": "4,N"}' (Xilinx's DPUCADF8H README); other DPUs batch 1;
- with data (--data, else data/test.npy if present): the integer DPU reference
  (dpu/reference.py) on it and its MSE; if the xmodel's folder holds the quantizer's
  deploy_check_data_int/, its dumps are compared with the reference on the first
  rows (as many as the batch), which must be the deploy rows.
--compile_options takes compile.sh's COMPILE_OPTIONS: a JSON object merged into the
--options that vai_c_xir gets (its input_shape wins); anything else is refused first.
--print_arch only prints the arch.json path that ARCH names; --print_compile_options
the --options JSON for vai_c_xir (an empty line: none), each on a line of its own.
--compiled reads the compiler's output and prints its subgraphs: which run on
the DPU, which stayed on the CPU. No DPU subgraph: exit code 1.
"""
import difflib
import json
import os
import sys

from flow import start_stage

start_stage(__name__)   # first: kernels pinned and Ctrl-C handled before torch is imported

try:
    from flow.checked_io import ArgumentParser, InputError, cli
    from dpu.simulation import deploy_check, deploy_rows, dump_folder, load_data, run_reference
    from dpu import reference, shifts
    from dpu.xmodel import SUPPORTED_OP_TYPES, XmodelError, _show, graph_to_model, read_graph, read_xmodel
except ImportError as e:    # a Python without the project's packages (numpy, protobuf)
    sys.stderr.write("preflight.py: error: {} cannot import what the checks need ({}): set up the "
                     "environment with 'make install' (compile.sh then takes .venv/bin/python), or inside "
                     "the Vitis AI docker 'pip install -r requirements.txt'\n".format(sys.executable, e))
    sys.exit(2)

from dpu import targets as dpu_targets
from dpu.targets import ARCH_ROOT, DEPLOY_COMMAND, batch_options, options_text

DEFAULT_DATA = "data/test.npy"
EXIT_NO_DPU_SUBGRAPH = 1


class Report:
    """The findings, printed as they come; the failures are kept for the final error."""

    def __init__(self):
        self.failures = []

    def ok(self, text):
        print("ok: " + text)

    def skip(self, text):
        print("skip: " + text)

    def fail(self, text):
        print("FAIL: " + text)
        self.failures.append(text)


# ---------------------------------------------------------------- the arch

def refuse_no_front_end(target, source):
    if target is not None and target.no_front_end:
        raise InputError("{}: refused, {}".format(source, target.no_front_end))


def is_dpu_name(arch):
    return "/" not in arch and not arch.endswith(".json")


def named_target(arch):
    """The Target of ARCH as given: a DPU name exactly (a typo is no DPU's), a path by the DPU
    folder it goes through."""
    return dpu_targets.by_dpu_name(arch) if is_dpu_name(arch) else dpu_targets.by_name(arch)


def closest_first(name, names):
    """`names` ordered by their likeness to `name` (difflib), the closest first."""
    upper = {n.upper(): n for n in names}
    return [upper[n] for n in difflib.get_close_matches(name.upper(), list(upper), n=len(upper), cutoff=0)]


def refuse_unknown_dpu(arch, root=ARCH_ROOT):
    """A DPU name outside the docker must be one that Vitis AI has (dpu_targets.KNOWN_DPUS);
    inside it resolve_arch checks the name against the docker's arch folder."""
    if not is_dpu_name(arch) or os.path.isdir(root):
        return
    if arch.upper() not in {name.upper() for name in dpu_targets.KNOWN_DPUS}:
        raise InputError("{}: unknown DPU name; the known ones, closest first: {} (or pass the path of an "
                         "arch.json)".format(arch, ", ".join(closest_first(arch, dpu_targets.KNOWN_DPUS))))


def resolve_arch(arch, root=ARCH_ROOT):
    """The arch.json path of ARCH: a path as given, a DPU name as root/<DPU>/<board>/arch.json."""
    target = named_target(arch)
    refuse_no_front_end(target, arch)
    if not is_dpu_name(arch):
        return arch
    if target is not None:
        return target.arch_path(root)
    refuse_unknown_dpu(arch, root)
    folder = os.path.join(root, arch)
    if not os.path.isdir(folder):
        known = sorted(name for name in os.listdir(root) if os.path.isdir(os.path.join(root, name))) \
            if os.path.isdir(root) else []
        where = "it has, closest first: " + ", ".join(closest_first(arch, known)) if known else \
            "not found (it is in the Vitis AI docker)"
        raise InputError("{}: no such DPU in {} ({})".format(arch, root, where))
    boards = sorted(board for board in os.listdir(folder)
                    if os.path.isfile(os.path.join(folder, board, "arch.json")))
    if len(boards) != 1:
        raise InputError("{}: {} has {} boards ({}); pass the path of one board's arch.json".format(
            arch, folder, len(boards), ", ".join(boards) or "no <board>/arch.json"))
    return os.path.join(folder, boards[0], "arch.json")


def read_arch(path, target=None):
    """The Target an arch.json names by its "target" or "fingerprint" (if it has neither,
    `target`: the one its path names), after checking the file."""
    if os.path.isdir(path):
        raise InputError("{}: is a folder, expected an arch.json file".format(path))
    try:
        with open(path) as f:
            arch = json.load(f)
    except FileNotFoundError:
        where = target.where_to_compile() if target is not None else ""
        raise InputError("{}: arch file not found{}".format(path, " ({})".format(where) if where else ""))
    except OSError as e:
        raise InputError("{}: cannot read ({})".format(path, e.strerror or e))
    except ValueError as e:     # JSONDecodeError, or bytes that are not text
        raise InputError("{}: not a JSON arch file ({})".format(path, e))
    except RecursionError:      # arrays or objects nested deeper than Python's recursion limit
        raise InputError("{}: not a JSON arch file (nested too deeply)".format(path))
    if not isinstance(arch, dict):
        raise InputError("{}: not a JSON arch file (expected an object)".format(path))
    if "target" not in arch and "fingerprint" not in arch:
        return target
    # What the compiler reads wins over the path: None for a DPU not in dpu_targets.
    named = (dpu_targets.by_name(arch.get("target", ""))
             or dpu_targets.by_fingerprint(arch.get("fingerprint", "")))
    refuse_no_front_end(named, path)
    return named


def target_of(arch, root=ARCH_ROOT):
    """The Target that ARCH names: by its arch.json where readable, else by its name or path."""
    target = named_target(arch)
    try:
        return read_arch(resolve_arch(arch, root), target)
    except InputError:      # checked before the compiler ran; here it only words a message
        return target


def describe_arch(path):
    """How an arch.json names its target, for the ok line ("" if it does not)."""
    try:
        with open(path) as f:
            arch = json.load(f)
    except (OSError, ValueError, RecursionError):
        return ""
    names = ["{} {}".format(key, arch[key]) for key in ("target", "fingerprint") if key in arch]
    return " ({})".format(", ".join(names)) if names else ""


def check_arch(report, arch, compiling, root=ARCH_ROOT):
    """(the Target that ARCH names, None for a DPU not in dpu_targets; False if ARCH is not a
    DPU at all), after a finding."""
    target = named_target(arch)
    try:
        refuse_unknown_dpu(arch, root)
    except InputError as e:
        report.fail(str(e))
        return False
    try:
        refuse_no_front_end(target, arch)
        in_docker_folder = is_dpu_name(arch) or os.path.abspath(arch).startswith(root + os.sep)
        if not compiling and in_docker_folder and not os.path.isdir(root):
            report.skip("arch {}: {} is not on this machine (it is in the Vitis AI docker)".format(
                arch, root))
            return target
        path = resolve_arch(arch, root)
        target = read_arch(path, target)
    except InputError as e:
        report.fail(str(e))
        return target
    report.ok("arch {}{}".format(path, describe_arch(path)))
    return target


def deploy_advice(batch):
    return "deploy at batch {}: {}".format(batch, DEPLOY_COMMAND.format(batch))


def check_batch(report, path, model, target, user_options=None):
    """The batch rule of the target's compiler (dpu_targets); for a DPU not in the table, batch 1.
    DPUCADF8H compiles batch 4: a batch-4 xmodel as it is, a batch-1 one with --options
    input_shape (Xilinx's DPUCADF8H README), which COMPILE_OPTIONS may set itself."""
    need = dpu_targets.required_batch(target)
    dpu = target.dpu if target is not None else "this DPU"
    if model.batch == need:
        report.ok("batch {}, the batch {}'s compiler takes".format(need, dpu))
        return
    if target is not None and target.batch_option:
        shape = dpu_targets.input_shape(need, model.input_size)
        option = "--options '{}'".format(options_text({"input_shape": shape}))
        if model.batch == 1:
            given = (user_options or {}).get("input_shape")
            if given is None:
                report.ok("batch 1: vai_c_xir gets {}, the batch {} compiles ({})".format(
                    option, dpu, target.batch_source))
            else:
                report.ok("batch 1: vai_c_xir gets COMPILE_OPTIONS's input_shape {} ({} compiles batch {}: "
                          "{})".format(json.dumps(given), dpu, need, target.batch_source))
            return
        report.fail("{}: batch {}, but {} needs batch {}: {}; deploy at batch 1, which vai_c_xir then gets "
                    "as batch {} with {} ({}): {}, or {}".format(
                        path, model.batch, dpu, need, target.batch_reason, need, option, target.batch_source,
                        DEPLOY_COMMAND.format(1), deploy_advice(need)))
        return
    if target is not None and target.batch_reason:
        why = "{} needs batch {}: {}".format(dpu, need, target.batch_reason)
    else:
        why = "{} compiles batch {} only".format(dpu, need)
    report.fail("{}: batch {}, but {}; {}".format(path, model.batch, why, deploy_advice(need)))


def check_engines(report, path, model, target):
    """The fused activations against the target's engines; scale ops (BatchNorm1d) are the compiler's call."""
    dpu = target.dpu if target is not None else "this DPU"
    used = sorted({layer.activation for layer in model.layers if layer.activation})
    if target is None or not target.activations:
        if used:
            report.skip("activations {}: the engines of {} are not in the table".format(", ".join(used), dpu))
    else:
        missing = [a for a in used if a not in target.activations]
        if missing:
            report.fail("{}: {} has no engine for {} (it fuses {})".format(
                path, dpu, ", ".join(missing), ", ".join(target.activations)))
        elif used:
            report.ok("activations {}: {}'s engines have them".format(", ".join(used), dpu))
    scales = [layer.name for layer in model.layers if layer.kind == "scale"]
    if scales:
        report.skip("scale ops of {} (BatchNorm1d, not folded by the quantizer): the compiler decides whether "
                    "they run on the DPU or the CPU; the check after vai_c_xir shows where they went".format(
                        ", ".join(scales)))


# ---------------------------------------------------------------- the xmodel

def check_xmodel(report, path):
    """The IntModel of the file, or None after a FAIL."""
    try:
        graph = read_graph(path)
        model = graph_to_model(graph, path)   # also refuses unknown ops
    except XmodelError as e:
        report.fail(str(e))
        return None
    present = {op.op_type for op in graph.op_node}
    sizes = [model.input_size] + [len(layer.bias) for layer in model.layers]
    report.ok("xmodel {} parses: {} layers ({}), batch {}, ops {}".format(
        path, len(model.layers), " -> ".join(map(str, sizes)), model.batch,
        "/".join(t for t in SUPPORTED_OP_TYPES if t in present)))
    return model


def check_shifts(report, path, model):
    """True if every Linear layer's shifts are in the DPU ranges; a FAIL per problem otherwise."""
    found = []
    legal = True
    for i, layer in model.linear_layers():     # the quantizer legalizes these only
        w, b, o = layer.fp_w, layer.fp_b, layer.fp_out
        for problem in shifts.check_layer(i, w, b, o):
            report.fail("{}: {}: {} (i={} w={} b={} o={})".format(path, layer.name, problem, i, w, b, o))
            legal = False
        found.append("{} cut {} bias {}".format(
            layer.name, shifts.shift_cut(i, w, o), shifts.shift_bias(i, w, b)))
    if legal:
        report.ok("shifts in the DPU ranges: " + ", ".join(found))
    return legal


# ---------------------------------------------------------------- the integer reference

def check_reference(report, path, model, data_path):
    try:
        load_data(data_path, model)
    except InputError as e:
        report.fail("{} ({} takes {} features: pass the data it was calibrated on with --data, in "
                    "compile.sh COMPILE_DATA=FILE.npy)".format(e, path, model.input_size))
        return
    try:
        features, outputs, mse = run_reference(path, model, data_path)
    except InputError as e:     # positions too far apart for 64-bit integers
        report.fail(str(e))
        return
    if mse is not None:
        report.ok("integer reference on {}: {} rows, MSE {:.6e}".format(data_path, len(features), mse))
    else:
        report.skip("MSE: the network has {} outputs, the data one target".format(outputs.shape[1]))
    check_deploy_dumps(report, path, model, features, data_path)


def check_deploy_dumps(report, path, model, features, data_path):
    folder = os.path.join(os.path.dirname(path), "deploy_check_data_int")
    if not os.path.isdir(folder):
        report.skip("deploy check: no {}".format(folder))
        return
    try:
        folder = dump_folder(folder, model.net_name)
    except InputError as e:
        report.fail(str(e))
        return
    try:
        rows = deploy_rows(features, model, data_path)
    except InputError as e:     # too few rows to be the deploy data: nothing to compare
        report.skip("deploy check: {}".format(e))
        return
    which = "row 0" if len(rows) == 1 else "rows 0 to {}".format(len(rows) - 1)
    checks, bad, differing_input = deploy_check(model, rows, folder)
    overflow = reference.overflow_explanation(rows, model.fp_in)
    if differing_input is not None and overflow:
        report.skip("deploy check: the input dump differs on {} of {}: {}".format(which, data_path, overflow))
    # A differing input means the data is not the deploy data: nothing to compare then.
    elif differing_input is not None:
        report.skip("deploy check: {} of {} {} not the deploy {} ({})".format(
            which, data_path, "is" if len(rows) == 1 else "are", "row" if len(rows) == 1 else "rows",
            differing_input.describe()))
    elif bad:
        report.fail("{}: deploy check: {} of {} tensors differ from the integer reference, first {}".format(
            folder, len(bad), len(checks), bad[0].describe()))
    else:
        report.ok("deploy check: all {} tensors in {} match the integer reference on {}".format(
            len(checks), folder, which))


# ---------------------------------------------------------------- the compiled xmodel

def _ops_under(subgraph):
    """The op names of a subgraph and all its descendants (XIR lists them at the leaves)."""
    names = set(subgraph.op_name)
    for child in subgraph.subg_child:
        names |= _ops_under(child)
    return names


def device_subgraphs(graph, source):
    """[(name, device, number of ops)] of the children of a compiled graph's root subgraph:
    the partition vai_c_xir wrote (device USER, DPU or CPU)."""
    if not graph.HasField("subg_root") or not graph.subg_root.subg_child:
        raise InputError("{}: has no subgraph tree (its root subgraph has no children): not an xmodel "
                         "written by vai_c_xir".format(source))
    children = []
    for child in graph.subg_root.subg_child:
        device = child.subg_attr["device"] if "device" in child.subg_attr else None
        if device is None or device.WhichOneof("value") != "string_value":
            raise InputError("{}: subgraph {} has no string attribute device, not an xmodel written by "
                             "vai_c_xir".format(source, _show(child.subgraph_name)))
        children.append((_show(child.subgraph_name), _show(device.string_value), len(_ops_under(child))))
    return children


def plural(n, word):
    return "{} {}{}".format(n, word, "" if n == 1 else "s")


def check_compiled(path, compiled, target, user_options=None):
    """Print the compiled graph's subgraphs; exit code 1 when none runs on the DPU."""
    children = device_subgraphs(read_graph(compiled), compiled)
    on = {device: [n for _, d, n in children if d == device] for device in ("DPU", "CPU")}
    placed = ["{} ({})".format(plural(len(on[device]), "subgraph"), plural(sum(on[device]), "op"))
              if on[device] else "none" for device in ("DPU", "CPU")]
    print("compiled {}: on the DPU: {}; on the CPU: {}".format(compiled, *placed))
    for name, device, n_ops in children:
        print("  {}: {}, {}".format(name, device, plural(n_ops, "op")))
    if on["DPU"]:
        return 0
    why = "see the compiler's output for why"
    if target is not None and target.batch != dpu_targets.DEFAULT_BATCH:
        model = read_xmodel(path)
        batch = model.batch
        if batch != target.batch:
            why = "the xmodel has batch {}, and {}'s compiler does that with any batch but {}".format(
                batch, target.dpu, target.batch)
            if target.batch_option:
                option = options_text({"input_shape": dpu_targets.input_shape(target.batch, model.input_size)})
                given = (user_options or {}).get("input_shape")
                why += "; the two routes to batch {}: vai_c_xir --options '{}' ({}; compile.sh passes it for a " \
                       "batch-1 xmodel, though one user found it did not take with Vitis AI 2.0, Vitis-AI " \
                       "#683){}, or {}".format(
                           target.batch, option, target.batch_source,
                           "" if given is None else " (this run's COMPILE_OPTIONS gave input_shape {})".format(
                               json.dumps(given)),
                           deploy_advice(target.batch))
            else:
                why += "; " + deploy_advice(target.batch)
        else:
            why = "the xmodel has batch {}, the one {}'s compiler needs, so the cause is another: {}".format(
                batch, target.dpu, why)
    print("preflight.py: error: {}: no DPU subgraph: the compiler left every op of the network on the CPU; "
          "{}".format(compiled, why), file=sys.stderr)
    return EXIT_NO_DPU_SUBGRAPH


# ---------------------------------------------------------------- vai_c_xir's --options

OPTIONS_SHOWN = 60      # characters of a bad COMPILE_OPTIONS value shown in the error


def parse_compile_options(text):
    """compile.sh's COMPILE_OPTIONS: a JSON object, else InputError naming COMPILE_OPTIONS."""
    shown = text if len(text) <= OPTIONS_SHOWN else text[:OPTIONS_SHOWN] + "..."
    example = """expected a JSON object such as '{"input_shape": "4,2"}'"""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise InputError("COMPILE_OPTIONS '{}': not valid JSON ({}); {}".format(shown, e, example))
    except RecursionError:
        raise InputError("COMPILE_OPTIONS '{}': not valid JSON (nested too deeply); {}".format(shown, example))
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
        raise InputError("COMPILE_OPTIONS '{}': {} in JSON, not an object; {}".format(shown, kind, example))
    return value


def compile_options(target, model, user_options=None):
    """What vai_c_xir gets as --options: the batch's input_shape (dpu_targets.batch_options),
    then the user's COMPILE_OPTIONS over it (theirs wins); {} for none."""
    options = batch_options(target, model.batch, model.input_size)
    options.update(user_options or {})
    return options


# ---------------------------------------------------------------- main

def parse_args():
    parser = ArgumentParser(description="Pre-flight checks before compiling an xmodel with vai_c_xir "
                                        "(compile.sh runs them).")
    parser.add_argument("xmodel", help="the quantizer's <Net>_int.xmodel")
    parser.add_argument("arch", help="arch.json path, or a DPU name such as DPUCADF8H")
    parser.add_argument("--data", help=".npy (rows, input_size + 1) for the integer reference; its first "
                                       "rows (as many as the xmodel's batch) must be the deploy rows "
                                       "(default: {} if present)".format(DEFAULT_DATA))
    parser.add_argument("--no_compiler", action="store_true",
                        help="vai_c_xir is not available: the docker's arch folder need not exist")
    parser.add_argument("--compile_options", metavar="JSON",
                        help="compile.sh's COMPILE_OPTIONS: a JSON object merged into vai_c_xir's --options "
                             "(its input_shape wins over the batch's) (default: none)")
    parser.add_argument("--print_arch", action="store_true",
                        help="only print the arch.json path that ARCH names")
    parser.add_argument("--print_compile_options", action="store_true",
                        help="only print the --options JSON for vai_c_xir (an empty line: none); after "
                             "--print_arch's line when both are given")
    parser.add_argument("--compiled", metavar="COMPILED_XMODEL",
                        help="only check vai_c_xir's output: print its DPU and CPU subgraphs, exit code 1 "
                             "if none runs on the DPU (default: none, run the pre-flight checks)")
    return parser.parse_args()


def main():
    args = parse_args()
    # First, before any finding: a bad value stops compile.sh before anything is written.
    user_options = parse_compile_options(args.compile_options) if args.compile_options else {}
    if args.print_arch or args.print_compile_options:
        if args.print_arch:
            print(resolve_arch(args.arch))
        if args.print_compile_options:
            options = compile_options(target_of(args.arch), read_xmodel(args.xmodel), user_options)
            print(options_text(options) if options else "")
        return 0
    if args.compiled:
        return check_compiled(args.xmodel, args.compiled, target_of(args.arch), user_options)
    report = Report()
    model = check_xmodel(report, args.xmodel)
    legal = model is not None and check_shifts(report, args.xmodel, model)
    target = check_arch(report, args.arch, compiling=not args.no_compiler)
    if model is not None and target is not False:      # False: ARCH is no DPU, no rule to check
        check_batch(report, args.xmodel, model, target, user_options)
        check_engines(report, args.xmodel, model, target)
    data = args.data
    if data is None and os.path.isfile(DEFAULT_DATA):
        data = DEFAULT_DATA
    if not legal:
        report.skip("integer reference: the xmodel failed its checks")
    elif data is None:
        report.skip("integer reference: no {} (pass one with --data; compile.sh: COMPILE_DATA)".format(
            DEFAULT_DATA))
    else:
        check_reference(report, args.xmodel, model, data)
    if report.failures:
        more = len(report.failures) - 1
        raise InputError(report.failures[0] + (" (and {} more failed check{} above)".format(
            more, "s" if more > 1 else "") if more else ""))
    return 0


if __name__ == "__main__":
    cli(main)
