"""The second route to the U250: an int8 network (a quantizer xmodel's IntModel) as an
hls4ml HLS project with the DPU's types, its C simulation built with g++, and its outputs
compared with the integer DPU reference. hls4ml_project.py parses, calls and prints."""
import argparse
import contextlib
import hashlib
import io
import os
import re
import shlex
import shutil
import subprocess

import numpy as np

from dpu.int_model import LEAKY_RELU, LEAKY_RELU_ALPHA, LEAKY_RELU_ALPHA_SHIFT, MATMUL, Q_MIN, RELU, RELU6
from flow.checked_io import InputError, Progress

U250_PART = "xcu250-figd2104-2L-e"
# A Xilinx part: x + c (commercial), a (automotive) or q (defense), a family, the device,
# then package and speed grade after dashes (xcu250-figd2104-2L-e, xc7z020clg400-1).
PART_FAMILIES = (("u", "Alveo (xcu50, xcu200, xcu250, xcu280 ...)"), ("vu", "Virtex UltraScale(+)"),
                 ("ku", "Kintex UltraScale(+)"), ("au", "Artix UltraScale+"), ("zu", "Zynq UltraScale+"),
                 ("7a", "Artix-7"), ("7k", "Kintex-7"), ("7v", "Virtex-7"), ("7z", "Zynq-7000"),
                 ("7s", "Spartan-7"), ("vc", "Versal AI Core"), ("ve", "Versal AI Edge"), ("vm", "Versal Prime"),
                 ("vp", "Versal Premium"), ("vh", "Versal HBM"), ("k", "Kria SOM (xck26)"))
PART_PATTERN = re.compile(r"^x[caq](?:{})\d[0-9a-z]*(?:-[0-9a-z]+)+$".format(
    "|".join(family for family, _ in PART_FAMILIES)), re.IGNORECASE)
PROJECT = "ffn"
INPUT = "x"
SYNTH_TOOLS = {"Vitis": "vitis-run", "Vivado": "vivado_hls"}
# Everything the two backends and their synthesis write at the top of the project;
# any other file in --output_dir makes the stage refuse to replace it.
PROJECT_FILES = ("build_lib.sh", "build_opt.tcl", "build_prj.tcl", "firmware", "hls4ml_config.yml",
                 "project.tcl", "vivado_synth.tcl", "tb_data", PROJECT + "_bridge.cpp", PROJECT + "_test.cpp",
                 PROJECT + "_prj", "vitis_hls.log", "vivado_hls.log", "logs", "build_stdout.log",
                 "build_stderr.log")
# hls4ml's function name for each DPU activation.
ACTIVATION_FUNCTIONS = {RELU: "relu", RELU6: "relu6", LEAKY_RELU: "leaky_relu"}


def part_name(text):
    """--part: a Xilinx part name (family, device, package, speed grade), else a one-line error."""
    if not PART_PATTERN.match(text):
        raise argparse.ArgumentTypeError(
            "{!r} is not a Xilinx part name such as {} (x + c/a/q, a family, the device, then package and "
            "speed grade after dashes); the families taken: {}".format(
                text, U250_PART, ", ".join("xc{} {}".format(family, name) for family, name in PART_FAMILIES)))
    return text


def fixed(fp, width=8, rounding=True):
    """ap_fixed of `width` bits whose last bit is 2^-fp; the DPU's rounding and saturation
    for a tensor (rounding=True), plain for an exact intermediate (nothing is ever cut)."""
    text = "ap_fixed<{},{}".format(width, width - fp)
    return text + (",AP_RND,AP_SAT>" if rounding else ">")


def exact_sum(n_terms, fp_a, fp_b, fp_bias):
    """The type holding sum(a * b) + bias of n_terms int8 products at position fp_a + fp_b and
    an int8 bias at fp_bias without loss: the finer position, and one bit over the bound."""
    fp = max(fp_a + fp_b, fp_bias)
    bound = (n_terms * Q_MIN * Q_MIN << (fp - fp_a - fp_b)) + (-Q_MIN << (fp - fp_bias))
    return fixed(fp, width=bound.bit_length() + 1, rounding=False)


def exact_values(q, fp):
    """float64 q * 2^-fp: the decimal text hls4ml writes then holds the value exactly."""
    return np.ldexp(np.asarray(q, dtype=np.float64), -fp)


# ---------------------------------------------------------------- the hls4ml model

def layer_list(model):
    """(hls4ml layer list, per-layer Precision) of the IntModel, one op (and its
    activation) at a time; names are the xmodel layers' (`l1` -> `dense_l1`, `relu_l1`)."""
    layers = [{"class_name": "InputLayer", "name": INPUT, "input_shape": [model.input_size]}]
    precision = {INPUT: {"result": fixed(model.fp_in)}}
    previous = INPUT
    for fp_in, layer in zip(model.input_positions(), model.layers):
        stem = "".join(c if c.isalnum() else "_" for c in layer.name)
        n_terms = layer.weight.shape[1] if layer.kind == MATMUL else 1
        exact = exact_sum(n_terms, fp_in, layer.fp_w, layer.fp_b)
        # With an activation after it the op keeps its exact sum; the activation rounds once.
        result = exact if layer.activation else fixed(layer.fp_out)
        if layer.kind == MATMUL:
            name = "dense_" + stem
            layers.append({"class_name": "Dense", "name": name, "inputs": [previous],
                           "n_in": layer.weight.shape[1], "n_out": layer.weight.shape[0], "use_bias": True,
                           # Keras layout [in, out]: the layer list is not channels-last converted
                           "weight_data": exact_values(layer.weight.T, layer.fp_w),
                           "bias_data": exact_values(layer.bias, layer.fp_b)})
            precision[name] = {"weight": fixed(layer.fp_w), "bias": fixed(layer.fp_b), "accum": exact,
                               "result": result}
        else:  # scale: a BatchNorm1d given as its quantized scale and offset
            name = "scale_" + stem
            layers.append({"class_name": "BatchNormalization", "name": name, "inputs": [previous],
                           "n_in": len(layer.bias), "n_filt": -1,
                           "scale_data": exact_values(layer.weight, layer.fp_w),
                           "bias_data": exact_values(layer.bias, layer.fp_b)})
            precision[name] = {"scale": fixed(layer.fp_w), "bias": fixed(layer.fp_b), "result": result}
        previous = name
        if layer.activation:
            name = "{}_{}".format(ACTIVATION_FUNCTIONS[layer.activation], stem)
            act = {"class_name": "Activation", "name": name, "inputs": [previous],
                   "activation": ACTIVATION_FUNCTIONS[layer.activation]}
            precision[name] = {"result": fixed(layer.fp_out)}
            if layer.activation == LEAKY_RELU:
                act.update(class_name="LeakyReLU", activ_param=LEAKY_RELU_ALPHA)
                # 26/256 exactly: the product with the exact sum is exact, then rounded once.
                precision[name]["param"] = fixed(LEAKY_RELU_ALPHA_SHIFT, width=LEAKY_RELU_ALPHA_SHIFT + 1,
                                                 rounding=False)
            layers.append(act)
            previous = name
    return layers, precision


def build_model(model, output_dir, backend, part):
    """The hls4ml ModelGraph of the IntModel, to be written into output_dir."""
    from hls4ml.model.graph import ModelGraph
    from hls4ml.utils.config import create_config

    layers, precision = layer_list(model)
    # Weights inside the headers: the text files would be read at run time from an
    # absolute path compiled into the library, the temporary folder's.
    config = create_config(output_dir=output_dir, project_name=PROJECT, backend=backend, part=part,
                           write_weights_txt=False)
    config["HLSConfig"] = {"Model": {"Precision": "ap_fixed<16,6>", "ReuseFactor": 1, "Strategy": "Latency"},
                           "LayerName": {name: {"Precision": p} for name, p in precision.items()}}
    with contextlib.redirect_stdout(io.StringIO()):
        hls_model = ModelGraph.from_layer_list(config, layers)
    # hls4ml names the C-simulation library with a random stamp; a digest of the layers
    # keeps it unique per network and the project the same bytes on every run.
    hls_model.config.config["Stamp"] = hashlib.sha256(repr((layers, precision)).encode()).hexdigest()[:8]
    return hls_model


def write_project(hls_model, tmp, output_dir):
    """Write the project into `tmp`; the one file naming its folder names `output_dir` instead."""
    with contextlib.redirect_stdout(io.StringIO()):
        hls_model.config.backend.writer.write_hls(hls_model)
    config = os.path.join(tmp, "hls4ml_config.yml")
    with open(config, encoding="utf-8") as f:
        text = f.read()
    with open(config, "w", encoding="utf-8", newline="\n") as f:
        f.write(text.replace(tmp, output_dir))


# bash -x marks each command of build_lib.sh with this (PS4), so that the build's steps show as they start.
TRACE = "+[build_lib.sh] "


def build_steps(script):
    """The g++ commands of build_lib.sh that compile or link (not its feature probes)."""
    with open(script, encoding="utf-8") as f:
        return [line for line in f if re.match(r"\s*\$\{?CC\}?\s", line) and re.search(r"\s-(c|shared)\s", line)]


def describe_step(command):
    """'g++ -c firmware/ffn.cpp' or 'g++ -shared ... -o firmware/ffn-<stamp>.so' of a traced command."""
    words = shlex.split(command) if command.count('"') % 2 == 0 else command.split()
    if "-c" in words[:-1]:
        return "g++ -c " + words[words.index("-c") + 1]
    if "-o" in words[:-1]:
        return "g++ link " + words[words.index("-o") + 1]
    return " ".join(words[:1])


def build_csim(hls_model, tmp, output_dir):
    """Build the C simulation in `tmp` (g++, hls4ml's build_lib.sh) and load it for predict();
    a line per compile or link step as it starts (a bar on a terminal)."""
    import ctypes

    total = len(build_steps(os.path.join(tmp, "build_lib.sh"))) or 1
    # Traced: bash prints each command with the TRACE mark before running it. bash reads PS4
    # from the script, not the environment, when run as root; $0 stays build_lib.sh.
    command = ["bash", "-c", "PS4='{}'; set -x; . ./build_lib.sh".format(TRACE), "build_lib.sh"]
    output = []
    started = 0
    with Progress("C simulation build (g++)", total, ticking=True) as progress:
        proc = subprocess.Popen(command, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                universal_newlines=True)
        try:
            for line in proc.stdout:
                marked = re.match(r"^\++\[build_lib\.sh\] (.*)$", line.rstrip("\n"))
                if marked is None:
                    output.append(line.rstrip("\n"))
                elif re.search(r"\s-(c|shared)(\s|$)", marked.group(1)) and started < total:
                    if started:
                        progress.advance()
                    started += 1
                    progress.note("{}/{} {}".format(started, total, describe_step(marked.group(1))))
            returncode = proc.wait()
        finally:
            if proc.poll() is None:     # interrupted: g++ goes too
                proc.kill()
                proc.wait()
        if returncode == 0:
            progress.advance(total - max(started - 1, 0))
    if returncode != 0:
        errors = [line for line in output if "error" in line] or output or ["?"]
        raise InputError("{}: the C simulation did not build with g++: {}".format(
            os.path.join(output_dir, "build_lib.sh"), errors[0].strip()))
    library = os.path.join(tmp, "firmware", "{}-{}.so".format(PROJECT, hls_model.config.get_config_value("Stamp")))
    hls_model._top_function_lib = ctypes.cdll.LoadLibrary(library)


def csim_outputs(hls_model, features):
    """The C simulation of every row (float32 in, as the DPU's input), float32 (rows, 1)."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    with contextlib.redirect_stdout(io.StringIO()):
        y = hls_model.predict(x)
    return np.asarray(y, dtype=np.float32).reshape(len(x), -1)


# ---------------------------------------------------------------- synthesis

def synthesize(hls_model, output_dir, backend):
    """HLS synthesis in the project; one line of latency and resources from its csynth report."""
    # Vitis's log goes to build_stdout.log in the project; vivado_hls prints its own.
    options = {"log_to_stdout": False} if backend == "Vitis" else {}
    with contextlib.redirect_stdout(io.StringIO()) as log:
        try:
            report = hls_model.build(csim=False, synth=True, cosim=False, export=False, **options)
        except Exception as e:  # hls4ml raises a bare Exception when the tool fails
            raise InputError("{}: {} synthesis failed ({})".format(output_dir, backend, e))
    synth = (report or {}).get("CSynthesisReport")
    if not synth:
        last = (log.getvalue().strip().splitlines() or ["no output"])[-1]
        raise InputError("{}: {} synthesis wrote no report ({})".format(output_dir, backend, last))
    text = "latency {}-{} cycles, interval {}-{}, clock {} ns (target {})".format(
        synth["BestLatency"], synth["WorstLatency"], synth["IntervalMin"], synth["IntervalMax"],
        synth["EstimatedClockPeriod"], synth["TargetClockPeriod"])
    resources = ["{} {} of {}".format(key, synth[key], synth.get("Available" + key, "?"))
                 for key in ("LUT", "FF", "DSP", "BRAM_18K", "URAM") if key in synth]
    return "; ".join([text] + resources)


# ---------------------------------------------------------------- main

def require_tools(synth, backend):
    """(InputError for a missing hls4ml or g++; whether the synthesis tool is there)."""
    try:
        import hls4ml  # noqa: F401
    except ImportError as e:
        raise InputError("hls4ml cannot be imported ({}): pip install 'hls4ml==1.3.0'".format(e))
    if shutil.which("g++") is None:
        raise InputError("g++: not found on PATH; hls4ml builds its C simulation with g++")
    return not synth or shutil.which(SYNTH_TOOLS[backend]) is not None


def compare(outputs, reference):
    """The result line's text: rows compared and whether all are equal."""
    differ = np.flatnonzero((outputs != reference).any(axis=1))
    text = "{} rows compared with the integer DPU reference: ".format(len(reference))
    if not len(differ):
        return True, text + "all equal"
    return False, text + "{} differ (first: row {}, C simulation {!r}, reference {!r})".format(
        len(differ), differ[0], float(outputs[differ[0], 0]), float(reference[differ[0], 0]))
