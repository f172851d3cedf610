#!/usr/bin/env bash
# The end of `make pipeline`: how many of the committed results the run reproduced byte
# for byte, and which differ. Under the pinned CPU kernels (flow/kernels.py) every one
# is expected to reproduce, on any x86-64 CPU.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
RESULTS=(data checkpoints logs quantize_result qat_result report)
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    echo "pipeline: not a git checkout, so the results cannot be compared with the committed ones"
    exit 0
fi
committed=$(git ls-files -- "${RESULTS[@]}" | wc -l)
changed=$(git diff --name-only -- "${RESULTS[@]}")
missing=$(git ls-files --deleted -- "${RESULTS[@]}")
new=$(git ls-files --others --exclude-standard -- "${RESULTS[@]}")
differ=$(printf '%s\n%s\n' "$changed" "$missing" | sort -u | sed '/^$/d')
n_differ=$(printf '%s' "$differ" | grep -c . || true)
echo "pipeline: reproduced $((committed - n_differ)) of $committed committed result files byte for byte"
if [[ -n $differ ]]; then
    echo "pipeline: these differ from the committed ones (git diff shows how):"
    printf '  %s\n' $differ
fi
if [[ -n $new ]]; then
    echo "pipeline: written and not committed:"
    printf '  %s\n' $new
fi
exit 0
