# Sourced by the launch scripts: make a venv hold exactly one locked environment.
#   HOURJAX_ENV=py311 (default) .venv          Python 3.11, requirements/lock-py311.txt, every extra
#   HOURJAX_ENV=py312           .venv-py3.12   Python 3.12, requirements/lock-py312.txt: the newest
#                                              jax / flax / grain / orbax / av the index serves (no
#                                              torch, no Beam: see pyproject.toml)
#   HOURJAX_ENV=py313           .venv-py3.13   Python 3.13, the same lock as py312 (every pin in it
#                                              serves 3.13 too)
# Re-installs only when pyproject.toml or the lock changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOURJAX_ENV="${HOURJAX_ENV:-py311}"
case "$HOURJAX_ENV" in
  py311) PYVER=3.11; VENV="$ROOT/.venv"; EXTRAS="torch,test,tpu,study,serve,annotate,beam"
         CHECK="import hourjax, jax, flax, torch, transformers" ;;
  py312|py313) PYVER="3.${HOURJAX_ENV#py3}"; VENV="$ROOT/.venv-py$PYVER"; EXTRAS="test,tpu,study,serve,annotate"
         CHECK="import hourjax, jax, flax, transformers" ;;
  *) echo "[setup] HOURJAX_ENV=$HOURJAX_ENV: expected py311, py312 or py313" >&2; exit 1 ;;
esac
LOCK="$ROOT/requirements/lock-${HOURJAX_ENV/py313/py312}.txt"
STAMP="$VENV/.hourjax-installed"
WANT="$(cat "$ROOT/pyproject.toml" "$LOCK" | sha256sum | cut -d' ' -f1)"

find_python() {   # python$1 on PATH if it runs, else pyenv's build of it
  local c
  for c in "python$1" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".*/bin/python"$1"; do
    if "$c" -c "import sys; assert sys.version_info[:2] == tuple(map(int, '$1'.split('.')))" 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  return 1
}

if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing $HOURJAX_ENV (requirements/$(basename "$LOCK")) into $VENV (a minute or two)" >&2
  PY="$(find_python "$PYVER")" || { echo "[setup] Python $PYVER not found (PATH, pyenv)" >&2; exit 1; }
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -c "$LOCK" -e "$ROOT[$EXTRAS]" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
  "$VENV/bin/python" -c "$CHECK" || { echo "[setup] install failed" >&2; exit 1; }
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
