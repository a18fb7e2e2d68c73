#!/usr/bin/env bash
# The main job: install (first time only), then a short FAB training on the 2-D mixture, with plots and a report.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
out=${1:-runs/demo}
boltzflow train quick_gmm --out "$out"
boltzflow evaluate "$out"
echo "plots and report in $out/"
