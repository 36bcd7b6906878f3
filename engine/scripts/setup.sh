#!/usr/bin/env bash
# Set up the engine on a fresh Debian/Ubuntu machine: system tools, then the Python package.
#   bash engine/scripts/setup.sh          # the engine and the `medgen` command
#   bash engine/scripts/setup.sh --test   # also the test tools: dciodvfy, Orthanc (+ DICOMweb), pytest, pydicom-data, PySide6
# Installs the CPU build of PyTorch. On a CUDA workstation install a CUDA build of torch first;
# pip keeps an installed torch that satisfies the engine's requirement.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras=""
if [[ "${1:-}" == "--test" ]]; then
    extras="[test]"
    if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == "0" ]]; then
        # Qt's offscreen rendering of the panel (PySide6) needs GL, fontconfig, xkbcommon and a font
        if ! command -v dciodvfy >/dev/null 2>&1 || ! command -v Orthanc >/dev/null 2>&1 \
            || ! ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so >/dev/null 2>&1 \
            || ! ldconfig -p | grep -q libxkbcommon.so.0 || ! ldconfig -p | grep -q libEGL.so.1 \
            || ! ls /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf >/dev/null 2>&1; then
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools orthanc orthanc-dicomweb \
                libgl1 libegl1 libfontconfig1 libxkbcommon0 libdbus-1-3 libglib2.0-0 fonts-dejavu-core >/dev/null
        fi
    else
        echo "setup: not root or no apt-get; install dicom3tools, orthanc and orthanc-dicomweb yourself" >&2
    fi
fi
python3 -m pip install -q --disable-pip-version-check "torch==2.13.0" 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check "torch>=2.1"
python3 -m pip install -q --disable-pip-version-check -e "${here}${extras}"
