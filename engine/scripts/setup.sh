#!/usr/bin/env bash
# Set up the engine on a fresh Debian/Ubuntu machine, in its own virtual environment.
#   bash engine/scripts/setup.sh          # the engine and the `medgen` command
#   bash engine/scripts/setup.sh --test   # also the test tools (dciodvfy, Orthanc, Chromium, pytest, ...)
#
# Where things go (fixed, so the README's commands stay the same everywhere):
#   <repo>/.venv              the engine's environment (MEDGEN_VENV overrides); works with PEP 668
#                             "externally managed" system Pythons because nothing is installed into them
#   <dir on PATH>/medgen      a launcher for .venv/bin/medgen: /usr/local/bin as root, else ~/.local/bin
#                             (or another directory of yours already on PATH; MEDGEN_BIN overrides)
#   <repo>/.venv/setup.log    everything the package managers printed
# Re-running is safe and quick: each stage checks what is there first. A PyTorch that the chosen
# Python already has (for example a CUDA build) is kept: the environment then sees the system packages.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${MEDGEN_VENV:-${repo}/.venv}"
python="${MEDGEN_PYTHON:-python3}"
with_tests=0
for arg in "$@"; do
    case "$arg" in
        --test) with_tests=1 ;;
        -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "setup: unknown option ${arg} (use --test or nothing)" >&2; exit 2 ;;
    esac
done
mkdir -p "$venv" 2>/dev/null || { echo "setup: cannot create ${venv}; set MEDGEN_VENV to a folder you can write" >&2; exit 1; }
log="${venv}/setup.log"
: >"$log"
is_root=0; [[ "$(id -u)" == "0" ]] && is_root=1
stage=0; stages=4; [[ $with_tests == 1 ]] && stages=5

step() { stage=$((stage + 1)); printf 'setup: [%d/%d] %s\n' "$stage" "$stages" "$1"; }
fail() {  # the last lines of the log, then the one line that says what to do
    echo "setup: failed. Last lines of ${log}:" >&2
    tail -n 8 "$log" | sed 's/^/    /' >&2
    echo "setup: $1" >&2
    exit 1
}
run() { echo "+ $*" >>"$log"; "$@" >>"$log" 2>&1; }
apt_install() {  # apt packages, as root only; one `apt-get update` per run
    if [[ $is_root != 1 ]] || ! command -v apt-get >/dev/null 2>&1; then return 1; fi
    if [[ -z "${apt_updated:-}" ]]; then run apt-get update -qq || return 1; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive run apt-get install -y -qq --no-install-recommends "$@"
}

# 1. System packages: the venv module (Debian ships it separately), and the test tools
step "system packages"
command -v "$python" >/dev/null 2>&1 || fail "no ${python} found: install Python 3.10 or newer (apt-get install python3)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || fail "$("$python" --version 2>&1) is too old: the engine needs Python 3.10 or newer (set MEDGEN_PYTHON to one)"
if [[ ! -x "${venv}/bin/python" ]] && ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    pyver="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    apt_install "python${pyver}-venv" || apt_install python3-venv \
        || fail "Python's venv module is missing: run 'sudo apt-get install python3-venv', then this script again"
fi
if [[ $with_tests == 1 ]]; then
    # dciodvfy and dcmtk validate output; Orthanc is the PACS; Chromium drives the report and reader
    # tests; invesalius-examples and mricron-data are real scans; dicomnifti and python3-pydicom (and
    # dicom3tools) ship real DICOM files for the real-file corpus (tests/real_corpus.py; about 20 MB);
    # the rest lets Qt draw offscreen. octave-dicom's five DICOM files count too where it is installed,
    # but it brings Octave (about 125 packages, 250 MB), so it is left to the user.
    wanted=(dicom3tools dcmtk orthanc orthanc-dicomweb chromium chromium-driver invesalius-examples
            mricron-data dicomnifti python3-pydicom libgl1 libegl1 libfontconfig1 libxkbcommon0 libdbus-1-3
            libglib2.0-0 fonts-dejavu-core)
    missing=()
    for pkg in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        if ! apt_install "${missing[@]}"; then
            echo "setup: could not install ${missing[*]} (needs root and apt-get); the tests that need them are skipped" >&2
        fi
    fi
fi

# 2. The environment; a Python that already has torch lends it (and only it matters) to the venv
step "Python environment in ${venv}"
if ! "${venv}/bin/python" -c 'import sys' >/dev/null 2>&1; then
    venv_opts=()
    "$python" -c 'import torch' >/dev/null 2>&1 && venv_opts+=(--system-site-packages)
    run "$python" -m venv "${venv_opts[@]}" "$venv" || fail "could not create ${venv}: see the log"
fi
vpy="${venv}/bin/python"
pip=("$vpy" -m pip install --disable-pip-version-check --progress-bar off)

# 3. PyTorch: keep what is there, else the pinned CPU build (a looser pin pulls a multi-GB CUDA build)
step "PyTorch"
if "$vpy" -c 'import torch' >/dev/null 2>&1; then
    echo "setup:       keeping torch $("$vpy" -c 'import torch; print(torch.__version__)')"
else
    run "${pip[@]}" "torch==2.13.0" || run "${pip[@]}" "torch>=2.1" \
        || fail "PyTorch did not install: check the network to PyPI, or install a torch build into ${venv} yourself"
fi

# 4. The engine (editable, so a git pull needs no reinstall) and the launcher
step "the engine (medgen)"
extras=""; [[ $with_tests == 1 ]] && extras="[test]"
run "${pip[@]}" -e "${repo}/engine${extras}" || fail "installing the engine failed: see the log"
launcher_dir="${MEDGEN_BIN:-}"
if [[ -n "$launcher_dir" ]]; then
    mkdir -p "$launcher_dir" || fail "cannot create MEDGEN_BIN=${launcher_dir}"
elif [[ $is_root == 1 ]]; then
    launcher_dir=/usr/local/bin
else
    IFS=: read -ra path_dirs <<<"$PATH"
    for dir in "${HOME}/.local/bin" "${HOME}/bin" "${path_dirs[@]}"; do
        if [[ ":${PATH}:" == *":${dir}:"* && -d "$dir" && -w "$dir" ]]; then launcher_dir="$dir"; break; fi
    done
fi
if [[ -n "$launcher_dir" ]]; then
    printf '#!/bin/sh\n# MedGenSlicer engine launcher, written by engine/scripts/setup.sh\nexec "%s" "$@"\n' \
        "${venv}/bin/medgen" >"${launcher_dir}/medgen" && chmod 755 "${launcher_dir}/medgen" \
        || fail "could not write ${launcher_dir}/medgen"
    hash -r 2>/dev/null || true
    echo "setup:       medgen -> ${launcher_dir}/medgen"
else
    echo "setup: no writable folder on your PATH: add this line to ~/.profile, then open a new shell:" >&2
    echo "    export PATH=\"${venv}/bin:\$PATH\"" >&2
fi

# 5. Test tools that come from PyPI (Slicer's core libraries are only for Python 3.10+, as is the engine)
if [[ $with_tests == 1 ]]; then
    step "test tools"
    "$vpy" -c 'import pytest, data_store' >/dev/null 2>&1 || fail "the test extras did not install: see the log"
fi
echo "setup: done (log: ${log})"
