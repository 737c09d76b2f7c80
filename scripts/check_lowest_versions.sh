#!/usr/bin/env bash
# The model, generation and evaluation tests against the LOWEST dependency versions that
# pyproject.toml allows: each direct dependency at its floor (read from pyproject.toml, so raising
# a floor changes what this checks), and each package those floors need but the venv does not
# satisfy at the newest version they accept (e.g. huggingface_hub<1.0 for transformers 4.40).
#
#   scripts/check_lowest_versions.sh [extra pytest arguments]
#
# Needs the package index (pip) and Python 3.11+ (tomllib). Everything is installed with
# `pip install --target DIR --no-deps` into a throwaway directory that goes first on PYTHONPATH,
# in front of the venv; every pinned package is checked to import from there, at its pinned
# version, before the tests run. Not at their floors: torch and torchvision (reused from the
# venv, a multi-GB download otherwise), the dev tools (pytest, ruff) and Python itself. Binary
# wheels only (a floor without a wheel for this Python fails), except rouge-score, which ships
# only as a pure-Python sdist.
#
# Settings (environment variables; defaults in brackets):
#   PYTHON [.venv/bin/python]  TESTS ["tests/models tests/eval"]
#   KEEP_DIR [0]  1: keep the directory (its path is printed)
# Exit status: 0 when the tests pass on the lowest versions, non-zero otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
TESTS=${TESTS:-tests/models tests/eval}
REUSED="torch torchvision"
DIR=$(mktemp -d "${TMPDIR:-/tmp}/scl-slt-lowest.XXXXXX")
if [[ ${KEEP_DIR:-0} == 1 ]]; then
    echo "lowest versions in $DIR (kept)"
else
    trap 'rm -rf "$DIR"' EXIT
fi

pip_target() {
    # Through a staging directory merged into DIR without overwriting: `pip --target` skips a
    # top-level directory that exists already, which would drop the second package of a
    # namespace (google/protobuf, then google/auth).
    local stage out status=0
    stage=$(mktemp -d "${TMPDIR:-/tmp}/scl-slt-stage.XXXXXX")
    out=$("$PY" -m pip install --quiet --disable-pip-version-check --target "$stage" --no-deps \
        --only-binary=:all: --no-binary=rouge-score "$@" 2>&1) || status=$?
    # This machine's pip configuration names local indexes that may be absent: not our noise.
    grep -v "is ignored: it is neither a file nor a directory" <<<"$out" || true
    [[ $status == 0 ]] && cp -rn "$stage/." "$DIR/"
    rm -rf "$stage"
    return "$status"
}

# 1. The floors: `name>=X` -> `name==X` for every dependency but the reused ones.
floors=$("$PY" - "$REUSED" <<'PYTHON'
import sys
import tomllib

from packaging.requirements import Requirement

reused = set(sys.argv[1].split())
with open("pyproject.toml", "rb") as f:
    for line in tomllib.load(f)["project"]["dependencies"]:
        req = Requirement(line)
        if req.name in reused:
            continue
        floor = [s.version for s in req.specifier if s.operator == ">="]
        if not floor:
            sys.exit(f"check_lowest_versions: {line!r} has no >= floor")
        print(f"{req.name}=={floor[0]}")
PYTHON
)
mapfile -t FLOORS <<<"$floors"
echo "floors: ${FLOORS[*]}"
if ! pip_target "${FLOORS[@]}"; then
    echo "check_lowest_versions: a floor cannot be installed here (above): raise it" >&2
    exit 1
fi

# 2. What the installed floors require that neither DIR nor the venv satisfies, at the newest
#    version accepted, until nothing is missing (a small resolver over --no-deps installs).
missing=""
for round in 1 2 3 4 5 6 7 8; do
    missing=$(PYTHONPATH="$DIR" "$PY" - "$DIR" "$REUSED" "${FLOORS[@]}" <<'PYTHON'
import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

target, reused = sys.argv[1], {canonicalize_name(n) for n in sys.argv[2].split()}
floors = {canonicalize_name(pin.split("==")[0]): pin for pin in sys.argv[3:]}
needed: dict[str, SpecifierSet] = {}
needed_by: dict[str, list[str]] = {}
for dist in metadata.distributions(path=[target]):
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        needed[name] = needed.get(name, SpecifierSet()) & req.specifier
        needed_by.setdefault(name, []).append(f"{dist.metadata['Name']} {dist.version}: {line}")
conflicts = []
for name, spec in sorted(needed.items()):
    try:
        have = metadata.version(name)  # DIR first (PYTHONPATH), then the venv
    except metadata.PackageNotFoundError:
        have = None
    if have is not None and spec.contains(have, prereleases=True):
        continue
    if name in reused or name in floors:
        pinned = floors.get(name, f"the venv has {name} {have}")
        conflicts.append(f"  {'; '.join(needed_by[name])}; but {pinned}")
    else:
        print(f"{name}{spec}")
if conflicts:
    conflicts.insert(0, "check_lowest_versions: raise these floors, which the others exclude:")
    sys.exit("\n".join(conflicts))
PYTHON
    )
    [[ -z $missing ]] && break
    mapfile -t MISSING <<<"$missing"
    echo "needed by the floors (round $round): ${MISSING[*]}"
    pip_target "${MISSING[@]}"
done
if [[ -n $missing ]]; then
    echo "check_lowest_versions: still unresolved: $missing" >&2
    exit 1
fi

# 3. Every pinned package imports from DIR at its pinned version: DIR shadows the venv's copy.
PYTHONPATH="$DIR" "$PY" - "$DIR" "${FLOORS[@]}" <<'PYTHON'
import importlib
import sys
from importlib import metadata
from pathlib import Path

import torch
import torchvision
import transformers
from packaging.utils import canonicalize_name
from packaging.version import Version

target = Path(sys.argv[1]).resolve()
pins = dict(pin.split("==") for pin in sys.argv[2:])
modules = {"protobuf": "google.protobuf", "pillow": "PIL", "rouge-score": "rouge_score",
           "hydra-core": "hydra"}  # fmt: skip
print(
    f"python {sys.version.split()[0]}; from the venv: torch {torch.__version__}, "
    f"torchvision {torchvision.__version__}"
)
print(f"transformers.__version__ = {transformers.__version__} ({transformers.__file__})")
wrong = []
for name, version in pins.items():
    module = importlib.import_module(modules.get(name, name.replace("-", "_")))
    where = Path(module.__file__).resolve()
    found = metadata.version(name)
    ok = Version(found) == Version(version) and target in where.parents
    print(f"  {'ok ' if ok else 'BAD'} {name:14s} {found:10s} {where.parent}")
    if not ok:
        wrong.append(f"{name}=={version}")
pinned = {canonicalize_name(name) for name in pins}
for dist in sorted(metadata.distributions(path=[str(target)]), key=lambda d: d.metadata["Name"]):
    if canonicalize_name(dist.metadata["Name"]) not in pinned:
        print(f"  needed by the floors: {dist.metadata['Name']} {dist.version}")
if wrong:
    sys.exit(f"check_lowest_versions: not imported from {target} at the pinned version: {wrong}")
PYTHON

# 4. The tests.
status=0
# shellcheck disable=SC2086  # TESTS is a list of paths
PYTHONPATH="$DIR" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$PY" -m pytest -q -p no:cacheprovider \
    -m "not slow" $TESTS "$@" || status=$?
if [[ $status == 0 ]]; then
    echo "check_lowest_versions: PASS on ${FLOORS[*]}"
else
    echo "check_lowest_versions: FAIL (pytest exit $status) on ${FLOORS[*]}" >&2
fi
exit "$status"
