#!/usr/bin/env bash
# Wheels for the device machine (benchmarks/gpu_suite.py): what hooklab needs there, torch aside.
#
# Run here, where the package registry is reachable:   bash benchmarks/gpu_wheels.sh
# It fills the git-ignored .gpu-wheels/ with wheels for the device's Python (3.12, x86-64
# Linux; set GPU_PYTHON=3.11 etc. for another) and writes .gpu-wheels/requirements.txt. The
# set is hooklab's dependency closure as installed on this machine (the versions its suite
# passed on), minus torch and its CUDA libraries, and minus what the device image already
# holds (IMAGE_HAS below, as that image was last described), except FORCE: packages whose
# image version is outside hooklab's bounds (transformers 5.17 there; hooklab needs 5.23-5.24).
# The folder must stay under the device tool's 64 MiB carry limit: the script prints its size.
#
# Then, through the device tool (carry [".gpu-wheels"]), see benchmarks/gpu_suite.py's header.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${GPU_WHEELS:-.gpu-wheels}
PY=${GPU_PYTHON:-3.12}
mkdir -p "$DEST"

IMAGE_HAS="absl-py accelerate aiofiles aiohttp annotated-doc anyio attrs certifi
charset-normalizer click filelock fsspec h11 hf-xet httpcore httpx huggingface-hub idna
jaxtyping jinja2 markdown-it-py markupsafe mdurl numpy packaging pandas pillow protobuf psutil
pyarrow pygments python-dateutil pyyaml regex requests rich safetensors sentencepiece
shellingham six tokenizers tqdm typer typing-extensions urllib3 wadler-lindig xxhash zipp
einops pydantic pydantic-core annotated-types typing-inspection narwhals"
FORCE="transformers"

python3 - "$DEST" "$IMAGE_HAS" "$FORCE" "$PY" <<'EOF'
import re
import sys
from importlib.metadata import PackageNotFoundError, distribution

from packaging.markers import default_environment
from packaging.requirements import Requirement

dest, image_has, force, python = sys.argv[1], set(sys.argv[2].split()), set(sys.argv[3].split()), sys.argv[4]
env = {**default_environment(), "python_version": python, "python_full_version": python + ".0"}
skip = re.compile(r"^(torch|triton|nvidia-.*|setuptools|pip|wheel|hooklab)$")
pins, todo = {}, ["hooklab"]
while todo:
    name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
    if name in pins or (skip.match(name) and name != "hooklab"):
        continue
    try:
        found = distribution(name)
    except PackageNotFoundError:
        print(f"not installed here, left out: {name}", file=sys.stderr)
        continue
    pins[name] = found.version
    for text in found.requires or []:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate({**env, "extra": ""}):
            continue
        todo.append(requirement.name)
pins.pop("hooklab", None)
chosen = {n: v for n, v in pins.items() if not skip.match(n) and (n not in image_has or n in force)}
with open(f"{dest}/requirements.txt", "w") as out:
    out.writelines(f"{n}=={v}\n" for n, v in sorted(chosen.items()))
print(f"{len(chosen)} of {len(pins)} packages to carry", file=sys.stderr)
EOF

while read -r pin; do
  python3 -m pip download --quiet --no-deps --dest "$DEST" --only-binary=:all: \
    --python-version "$PY" --implementation cp --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any "$pin" \
    2>/dev/null || {
    # no wheel for that Python (a pure-Python sdist): carried as source, built there
    echo "source only: $pin"
    python3 -m pip download --quiet --no-deps --no-binary=:all: --dest "$DEST" "$pin"
  }
done <"$DEST/requirements.txt"
du -sh "$DEST"
ls "$DEST"
