"""calibration.json: what a calibration of vai_q_pytorch_quant.py was run on.

Calibration writes it beside its quant_info.json (which stays the quantizer's own
text, for either backend): the checkpoint file and its sha256, the input size, the
calibration data file and its sha256, the rows and the batch size, subset_len, the
--nndct_* options, whether fast finetune ran, and the quantizer (backend and release:
2.5 and 3.5 write other file formats and names, which the other cannot read). Test mode and --deploy compare it
with their own run and refuse what determines another quantized network (another
checkpoint, input size, options or fast finetune): the positions would be applied
to a network they were not computed for, and the int8 results would be silently
wrong. Other evaluation rows are legitimate and only noted. A folder without the
record (release 1.3, the real quantizer's own, older calibrations) is accepted
with a note that it cannot be checked.
"""
import hashlib
import json
import os
import sys

from flow.checked_io import InputError, note, write_text
from vaiq.options import DEFAULT_RELEASE, SUPPORTED, defaults, parse_nndct_options, split_nndct_args
from vaiq.quant_info import QUANT_INFO

RECORD = "calibration.json"
MAX_BYTES = 1 << 20
WRITTEN_BY = "vai_q_pytorch_quant.py --quant_mode calib"
# key: (type, what determines the quantized network: refused when it differs)
FIELDS = {
    "written_by": (str, False),
    "release": (str, True),   # first: another release's files are another format
    "checkpoint": (str, False),
    "checkpoint_sha256": (str, True),
    "input_size": (int, True),
    "data": (str, False),
    "data_sha256": (str, False),
    "rows": (int, False),
    "batch_size": (int, False),
    "subset_len": ((int, type(None)), False),
    "nndct_options": (dict, True),
    "fast_finetune": (bool, True),
    "backend": (str, False),
}
# Records written before the release was recorded are the 3.5 built-in's or the real 3.5's.
OPTIONAL = {"release": DEFAULT_RELEASE}
# Calibrating one row at a time: each activation's position is then its most frequent
# over single rows, which for the shipped model is 87x the int8 MSE of batch 64.
SMALL_BATCH = 1
GOOD_BATCH = 64


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def nndct_options(argv, release, with_defaults=True):
    """{name: value}: the supported options parsed (with the release's defaults, so that
    giving a default or not is the same); any other, for the real quantizer, as given."""
    pairs = split_nndct_args(argv)[0]
    options = parse_nndct_options([word for flag, value in pairs if flag[2:] in SUPPORTED for word in (flag, value)],
                                  release)
    if not with_defaults:
        options = {name: value for name, value in options.items() if "--" + name in dict(pairs)}
    options.update((flag[2:], value) for flag, value in pairs if flag[2:] not in SUPPORTED)
    return options


def of_run(args, checkpoint, dataset, argv, backend):
    """The record of this run of the script (`checkpoint`: the state dict's path; `backend`:
    a quantization.backend.Backend): what a calibration writes, what test mode compares."""
    return {
        "written_by": WRITTEN_BY,
        "checkpoint": checkpoint,
        "checkpoint_sha256": sha256(checkpoint),
        "input_size": args.input_size,
        "data": dataset.path,
        "data_sha256": sha256(dataset.path),
        "rows": len(dataset),
        "batch_size": args.batch_size,
        "subset_len": args.subset_len,
        "nndct_options": nndct_options(_words(argv), backend.release),
        "fast_finetune": args.fast_finetune,
        "backend": backend.name,
        "release": backend.release,
    }


def _words(argv):
    return sys.argv[1:] if argv is None else argv


def write(output_dir, record):
    write_text(os.path.join(output_dir, RECORD), json.dumps(record, indent=2) + "\n")


def read(output_dir):
    """The record in output_dir, or None when there is none."""
    path = os.path.join(output_dir, RECORD)
    if not os.path.isfile(path):
        return None

    def damaged(reason):
        return InputError("{}: damaged calibration record ({}); run --quant_mode calib again".format(path, reason))

    if os.path.getsize(path) > MAX_BYTES:
        raise damaged("larger than {} bytes".format(MAX_BYTES))
    try:
        with open(path, "rb") as f:
            record = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise damaged("not JSON: {}".format(str(e).splitlines()[0]))
    except OSError as e:
        raise InputError("{}: cannot read ({})".format(path, e.strerror or e))
    if not isinstance(record, dict):
        raise damaged("expected an object")
    for key, value in OPTIONAL.items():
        record.setdefault(key, value)
    for key, (kind, _) in FIELDS.items():
        if key not in record:
            raise damaged("no {!r}".format(key))
        # bool is an int to Python, but a count is never true or false
        if not isinstance(record[key], kind) or (kind is int and isinstance(record[key], bool)):
            raise damaged("{!r} is {!r}".format(key, record[key]))
    return record


def note_calibration(record):
    """Say so when the calibration itself is likely poor (the quantizer's own result, kept)."""
    if record["batch_size"] <= SMALL_BATCH < record["rows"]:
        note("--batch_size {}: each activation's fix position is its most frequent over single rows, which can "
             "be far worse than over batches (the shipped model: 87x the int8 MSE of --batch_size {}); "
             "calibrate with --batch_size {}".format(record["batch_size"], GOOD_BATCH, GOOD_BATCH))


def check(args, checkpoint, dataset, argv, backend):
    """Test mode and --deploy: refuse a calibration of another network (InputError,
    one line: what differs and the command that recalibrates); note other rows.
    The --nndct_* options count where this run gives them: without any, test mode
    runs what was calibrated, as with the real quantizer (whose options act in calib)."""
    output_dir, current = args.output_dir, of_run(args, checkpoint, dataset, argv, backend)
    recorded = read(output_dir)
    if recorded is None:
        if os.path.isfile(os.path.join(output_dir, QUANT_INFO)):   # else the quantizer says what is missing
            note("{}: no {}, so it cannot be checked that it was calibrated on {} (a folder of another release or "
                 "of the real quantizer?)".format(output_dir, RECORD, current["checkpoint"]))
        return
    if recorded["release"] == current["release"]:
        current["nndct_options"] = dict(recorded["nndct_options"], **nndct_options(_words(argv), current["release"],
                                                                                 with_defaults=False))
    differences = [_difference(key, recorded, current) for key, (_, network) in FIELDS.items()
                   if network and recorded[key] != current[key]]
    if differences:
        raise InputError("{}: {}; recalibrate: {}".format(
            os.path.join(output_dir, RECORD), "; ".join(differences), recalibrate_command(recorded, current,
                                                                                           output_dir)))
    if (recorded["data_sha256"], recorded["rows"]) != (current["data_sha256"], current["rows"]):
        note("evaluating on {} ({} rows), calibrated on {} ({} rows)".format(
            current["data"], current["rows"], recorded["data"], recorded["rows"]))


def _difference(key, recorded, current):
    if key == "checkpoint_sha256":
        return "calibrated on checkpoint {} (sha256 {}), this run's {} has sha256 {}".format(
            recorded["checkpoint"], recorded[key][:12], current["checkpoint"], current[key][:12])
    if key == "input_size":
        return "calibrated with --input_size {}, this run has {}".format(recorded[key], current[key])
    if key == "fast_finetune" and recorded[key]:
        return ("calibrated with --fast_finetune, this run is without it: add --fast_finetune to use the finetuned "
                "parameters, or recalibrate without it, which discards them")
    if key == "fast_finetune":
        return "calibrated without --fast_finetune, this run is with it"
    if key == "release":
        return ("calibrated by vai_q_pytorch {} ({}), this run is vai_q_pytorch {} ({}): the releases write other "
                "quant_info.json and bias_corr.pth, which the other cannot read".format(
                    recorded[key], recorded["backend"], current[key], current["backend"]))
    changed = sorted(name for name in current[key] if current[key][name] != recorded[key].get(name))
    return "calibrated with {}, this run gives {}".format(
        " ".join("--{} {}".format(name, recorded[key].get(name, "(not given)")) for name in changed),
        " ".join("--{} {}".format(name, current[key][name]) for name in changed))


def _option_words(options, release):
    default = defaults(release)
    return " ".join("--{} {}".format(name, value) for name, value in sorted(options.items())
                    if name not in SUPPORTED or value != default[name])


def recalibrate_command(recorded, current, output_dir):
    """This run's network (checkpoint, input size, options, fast finetune) calibrated
    on the recorded rows in the recorded batches."""
    words = ["python", "vai_q_pytorch_quant.py", "--quant_mode", "calib",
             "--data_dir", os.path.dirname(recorded["data"]) or ".", "--calib_data", os.path.basename(recorded["data"]),
             "--model_name", current["checkpoint"], "--input_size", str(current["input_size"]),
             "--batch_size", str(recorded["batch_size"])]
    if recorded["subset_len"] is not None:
        words += ["--subset_len", str(recorded["subset_len"])]
    words += ["--output_dir", output_dir] + (["--fast_finetune"] if current["fast_finetune"] else [])
    if current["backend"] == "builtin" and current["release"] != DEFAULT_RELEASE:
        words += ["--vai_release", current["release"]]
    return " ".join(words + _option_words(current["nndct_options"], current["release"]).split())
