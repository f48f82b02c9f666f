#!/usr/bin/env bash
# Downloads into .whl/ the wheels bench/device_check.sh needs on the lent GPU host, which reaches
# no package registry: the packages its image lacks (see the device README's KINDS.md). Run here,
# where PyPI is reachable; then carry .whl with the command (it is git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
# ml_collections: ConfigDict, the stage and run configs. Pure Python; its own needs (absl-py,
# PyYAML) are in the image.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp -d .whl "ml_collections==1.1.0"
ls -l .whl
