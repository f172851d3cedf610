"""quant_quality.py's command line (its measurements are the README's quality table)."""
from conftest import run_script


def test_help_describes_the_script_in_whole_sentences():
    result = run_script("tools/quant_quality.py", "--help")
    assert result.returncode == 0, result.stderr
    description = " ".join(result.stdout.split("\n\n")[1].split())
    assert description == ("How good is int8? Float, default calibration, fast finetune, and the best that "
                           "choosing activation positions alone can reach, on calibration and held-out rows.")
