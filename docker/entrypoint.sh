#!/usr/bin/env bash
# Entry point of every image: optional SSH server (multi-node mpirun), oneCCL's environment when
# installed, then the recipe engine with the container's arguments:
#   docker run IMAGE recipe=neural_chat_v3 hardware=gaudi2_8x
set -euo pipefail
if [[ "${START_SSHD:-0}" == "1" ]] && command -v sshd >/dev/null; then
    mkdir -p /run/sshd && /usr/sbin/sshd -p "${SSHD_PORT:-22}"
fi
ccl_path=$(python -c "import oneccl_bindings_for_pytorch as m, os; print(os.path.dirname(m.__file__))" 2>/dev/null || true)
if [[ -n "${ccl_path}" && -f "${ccl_path}/env/setvars.sh" ]]; then
    # shellcheck disable=SC1091
    source "${ccl_path}/env/setvars.sh"   # Intel MPI's mpirun and oneCCL, as ITREX's multi-node guide does
fi
exec python -m neuralchat_recipes "$@"
