#!/bin/sh
# Install prelim's dependencies into the active virtual environment:
#   install-deps.sh TORCH_INDEX_URL TORCH_VERSION
# torch comes first, alone, from the given PyTorch index (CPU or CUDA build);
# everything else comes from pyproject.toml, held to constraints.txt, which
# also fills in torch's own dependencies.
set -eu
torch_index_url=$1
torch_version=$2

python -m pip install --no-deps --index-url "$torch_index_url" "torch==$torch_version"
python - > /tmp/requirements.txt <<'PY'
import tomllib

with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
PY
python -m pip install -c constraints.txt -r /tmp/requirements.txt
python -m pip check
rm /tmp/requirements.txt
