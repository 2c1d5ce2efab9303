# Sourced by the launch scripts: make ./.venv hold exactly the pinned environment.
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.hourjax-installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing the pinned environment into $VENV (about a minute)" >&2
  python3.11 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[torch,test,tpu,study,serve,annotate]" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
  "$VENV/bin/python" -c "import hourjax, jax, flax, torch, transformers" \
    || { echo "[setup] install failed" >&2; exit 1; }
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# libtpu is installed for ahead-of-time compilation; on a host without TPU or GPU keep JAX on
# the CPU so it neither probes for TPUs nor takes libtpu's single-process lock.
if [ -z "${JAX_PLATFORMS:-}" ] && ! ls /dev/accel* /dev/vfio/[0-9]* >/dev/null 2>&1 \
    && ! command -v nvidia-smi >/dev/null 2>&1; then
  export JAX_PLATFORMS=cpu
fi
export ALLOW_MULTIPLE_LIBTPU_LOAD="${ALLOW_MULTIPLE_LIBTPU_LOAD:-1}"
cd "$ROOT"
