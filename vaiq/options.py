"""The `--nndct_*` command-line options, which vai_q_pytorch reads from sys.argv
itself; the built-in quantizer reads the ones it implements the same way, with the
defaults of the release it follows."""
from flow.checked_io import InputError

TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")

# The releases the built-in reproduces and their defaults that differ (vai_q_pytorch.md,
# "Release 2.5"): 2.5's bias correction steps twice as far.
RELEASES = {
    "3.5": {"nndct_param_corr_rate": 0.05},
    "2.5": {"nndct_param_corr_rate": 0.1},
}
DEFAULT_RELEASE = "3.5"


def _bool(flag, value):
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise InputError("{}: expected True or False, got {!r}".format(flag, value))


def _positive_float(flag, value):
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is None or not 0 < number < float("inf"):
        raise InputError("{}: expected a positive number, got {!r}".format(flag, value))
    return number


# name: (parser, what it does); the defaults come from RELEASES, else DEFAULTS.
SUPPORTED = {
    "nndct_param_corr": (_bool, "bias correction during calibration"),
    "nndct_param_corr_rate": (_positive_float, "bias correction's step"),
}
DEFAULTS = {"nndct_param_corr": True}


def defaults(release=DEFAULT_RELEASE):
    return dict(DEFAULTS, **RELEASES[release])


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


def check_supported_values(argv):
    """InputError for a supported option with a value it does not take (both backends:
    the real quantizer would fail on it later, after work)."""
    for flag, value in split_nndct_args(argv)[0]:
        if flag[2:] in SUPPORTED:
            SUPPORTED[flag[2:]][0](flag, value)


def parse_nndct_options(argv, release=DEFAULT_RELEASE):
    """{name: value} for every supported option, with the release's defaults; an
    unsupported one is an error."""
    options = defaults(release)
    for flag, value in split_nndct_args(argv)[0]:
        name = flag[2:]
        if name not in SUPPORTED:
            raise InputError("{}: not supported by the built-in quantizer (supported: {})".format(
                flag, ", ".join("--" + n for n in SUPPORTED)))
        options[name] = SUPPORTED[name][0](flag, value)
    return options
