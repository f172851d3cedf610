"""The `--nndct_*` command-line options, which vai_q_pytorch reads from sys.argv
itself; the built-in quantizer reads the ones it implements the same way."""
from checked_io import InputError

TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")
# name: (default, what it does)
SUPPORTED = {
    "nndct_param_corr": (True, "bias correction during calibration"),
}


def split_nndct_args(argv):
    """([(flag, value), ...] of the --nndct_* options, the other words), from words
    such as ['--nndct_param_corr', 'False'] or ['--nndct_param_corr=0']."""
    pairs, other = [], []
    words = iter(argv)
    for word in words:
        if word.startswith("--nndct_"):
            pairs.append(tuple(word.split("=", 1)) if "=" in word else (word, next(words, "")))
        else:
            other.append(word)
    return pairs, other


def parse_nndct_options(argv):
    """{name: value} for every supported option; an unsupported one is an error."""
    options = {name: default for name, (default, _) in SUPPORTED.items()}
    for flag, value in split_nndct_args(argv)[0]:
        name = flag[2:]
        if name not in SUPPORTED:
            raise InputError("{}: not supported by the built-in quantizer (supported: {})".format(
                flag, ", ".join("--" + n for n in SUPPORTED)))
        if value.lower() in TRUE:
            options[name] = True
        elif value.lower() in FALSE:
            options[name] = False
        else:
            raise InputError("{}: expected True or False, got {!r}".format(flag, value))
    return options
