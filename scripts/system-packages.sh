#!/usr/bin/env bash
# Makes sure the Debian packages named as arguments are installed, so that every make target
# can set itself up on a fresh machine. A package counts as installed when what the project
# uses from it works (busted for lua-busted, objdump for binutils, python3's venv module for
# python3-venv). Missing ones are installed with apt-get as root (or with sudo when it needs no
# password); otherwise the script names the command to run and fails.
#
#   bash scripts/system-packages.sh luajit lua-busted
set -euo pipefail

present() {
  case "$1" in
    lua-busted) command -v busted ;;
    binutils) command -v objdump ;;
    python3-venv) python3 -c 'import venv, ensurepip' ;;
    *) command -v "$1" ;;
  esac >/dev/null 2>&1
}

missing=()
for package in "$@"; do
  present "$package" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "missing Debian packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "missing packages: ${missing[*]}, and this is not a Debian-like system: install them with your package manager" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for package in "${missing[@]}"; do
  present "$package" || { echo "$package was installed but still does not work" >&2; exit 1; }
done
