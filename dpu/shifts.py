"""The DPU's shift ranges (dpu.md): for a Linear with input position i, weight w,
bias b and output o, the DPU adds the bias to the accumulator (position i + w)
shifted by shift_bias and scales the sum to the output by shift_cut; both shifts
have hardware ranges. The quantizer's legalization (vaiq/legalize.py) keeps
positions inside them; the pre-flight checks and the integer reference use them.
"""
SHIFT_CUT_MIN, SHIFT_CUT_MAX = 0, 16
SHIFT_BIAS_MAX = 16


def shift_cut(i, w, o):
    return w + i - o


def shift_bias(i, w, b):
    return w + i - b


def shift_bias_min(cut):
    """The lowest legal shift_bias for a layer whose shift_cut is `cut`."""
    return min(0, cut - SHIFT_CUT_MAX)


def check_layer(i, w, b, o):
    """Problems of one layer's positions, as one-line texts (empty when legal)."""
    cut, bias = shift_cut(i, w, o), shift_bias(i, w, b)
    problems = []
    if not SHIFT_CUT_MIN <= cut <= SHIFT_CUT_MAX:
        problems.append("shift_cut {} outside [{}, {}]".format(cut, SHIFT_CUT_MIN, SHIFT_CUT_MAX))
    if not shift_bias_min(cut) <= bias <= SHIFT_BIAS_MAX:
        problems.append("shift_bias {} outside [{}, {}]".format(bias, shift_bias_min(cut), SHIFT_BIAS_MAX))
    return problems
