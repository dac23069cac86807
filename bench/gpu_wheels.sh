#!/usr/bin/env bash
# The wheels a lent GPU machine lacks to run this project (it has torch, CUDA and no package index), downloaded
# here into .whl/ (git-ignored through .git/info/exclude) at constraints.txt's versions, for Python 3.12 there
# (PYVER=3.11 for another).
# Then, with the device tool: run(carry=[".whl"], command=
#   "python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
#    export PYTHONPATH=/tmp/site:$PWD && python3 bench/gpu.py ...")
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
pin() { grep -i -E "^$1==" constraints.txt | head -1; }
# the project's own needs beyond the machine's image (its transformers and huggingface_hub are older)
wanted=(trl transformers huggingface_hub tokenizers peft accelerate datasets dill multiprocess hydra-core omegaconf
        pydantic pydantic_core annotated-types typing-inspection typing_extensions nltk defusedxml httpx2 httpcore2
        truststore kernels tomlkit)
specs=()
for name in "${wanted[@]}"; do specs+=("$(pin "$name")"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${specs[@]}"
# published as source only: built here (pure Python)
python3 -m pip wheel -q --no-deps -w .whl "$(pin antlr4-python3-runtime)" "$(pin rouge_score)"
du -sh .whl && ls .whl
