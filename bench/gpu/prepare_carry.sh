#!/usr/bin/env bash
# Fill .gpu/ (ignored by git) with what bench/gpu/speech_train.sh needs on a GPU machine that
# has Python 3.12 and PyTorch but nothing else of ours and no network: espeak-ng (binary,
# libraries, English data) and the pure-Python packages the speech recipe imports, taken from
# this checkout's .venv, plus Python 3.12 wheels of the two compiled ones. ~29 MB.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
carry=$repo/.gpu
site_packages=$(ls -d "$repo"/.venv/lib/python3*/site-packages)
command -v espeak-ng >/dev/null || { echo "espeak-ng is not installed here (make speech-deps)"; exit 1; }
grep -qx '/.gpu/' "$repo/.git/info/exclude" 2>/dev/null || { mkdir -p "$repo/.git/info"; echo /.gpu/ >>"$repo/.git/info/exclude"; }
rm -rf "$carry" && mkdir -p "$carry/site" "$carry/espeak/bin" "$carry/espeak/lib"

# espeak-ng: the binary, its library and libsonic, and English data only (ESPEAK_DATA_PATH).
espeak_lib=$(ldd "$(command -v espeak-ng)" | awk '/libespeak-ng/ {print $3}')
cp "$(command -v espeak-ng)" "$carry/espeak/bin/"
cp "$espeak_lib" "$(ldd "$espeak_lib" | awk '/libsonic/ {print $3}')" "$carry/espeak/lib/"
cp -r "$(dirname "$espeak_lib")/espeak-ng-data" "$carry/espeak/"
find "$carry/espeak/espeak-ng-data" -maxdepth 1 -name '*_dict' ! -name en_dict -delete
rm -rf "$carry/espeak/espeak-ng-data/mbrola_ph"
# libpcaudio plays sound and pulls in PulseAudio, ALSA and X11; with --stdout espeak-ng plays
# nothing, so a stub with the same symbols stands in for it.
cc -shared -fPIC -O2 -Wl,-soname,libpcaudio.so.0 -o "$carry/espeak/lib/libpcaudio.so.0" -x c - <<'C'
#include <stddef.h>
struct audio_object;
struct audio_object *create_audio_device_object(const char *d, const char *a, const char *n) { return NULL; }
int audio_object_open(struct audio_object *o, int f, unsigned r, unsigned char c) { return -1; }
void audio_object_close(struct audio_object *o) {}
void audio_object_destroy(struct audio_object *o) {}
int audio_object_write(struct audio_object *o, const void *d, size_t b) { return -1; }
int audio_object_drain(struct audio_object *o) { return 0; }
int audio_object_flush(struct audio_object *o) { return 0; }
const char *audio_object_strerror(struct audio_object *o, int e) { return "no audio"; }
C

# Pure-Python packages the recipe imports that the GPU image lacks (wordfreq: English only).
for package in wordfreq ftfy wcwidth langcodes locate num2words docopt.py jiwer pydantic annotated_types \
    typing_inspection typing_extensions.py; do
    cp -r "$site_packages/$package" "$carry/site/"
done
find "$carry/site/wordfreq/data" -type f ! -name '*_en.*' -delete
find "$carry/site" -name __pycache__ -prune -exec rm -rf {} +
# Training decodes no media, but the recipe's imports reach mmserve.plugins.media, which imports
# PyAV (a 36 MB wheel: too big to carry, and the GPU image lacks it) and Pillow (which the image
# may lack) and names their types in signatures. Stand-ins whose every attribute is a placeholder
# type let those imports through; using one fails loudly. PyAV's always goes (site/), Pillow's
# only where the image has no Pillow (fallback/, which speech_train.sh adds then).
stub_package() {  # stub_package DIR NAME SUBMODULE...
    local package=$1/$2 submodule
    mkdir -p "$package"
    cat >"$package/__init__.py" <<'PY'
"""A stand-in made by bench/gpu/prepare_carry.sh for the GPU training machine: imports only."""


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (Exception,), {"__init__": _unavailable})


def _unavailable(self, *args, **kwargs):
    raise RuntimeError(f"{__name__} is a stand-in on this machine (bench/gpu/prepare_carry.sh)")
PY
    for submodule in "${@:3}"; do echo "from $2 import __getattr__  # noqa: F401" >"$package/$submodule.py"; done
}
stub_package "$carry/site" av container stream error
stub_package "$carry/fallback" PIL Image
# The compiled ones, for the GPU image's CPython 3.12.
wheels=$(mktemp -d)
"$repo/.venv/bin/python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$wheels" \
    "pydantic-core==$("$repo/.venv/bin/python" -c 'import pydantic_core; print(pydantic_core.__version__)')" \
    "rapidfuzz==$("$repo/.venv/bin/python" -c 'import rapidfuzz; print(rapidfuzz.__version__)')"
for wheel in "$wheels"/*.whl; do (cd "$carry/site" && python3 -m zipfile -e "$wheel" .); done
rm -rf "$wheels"
du -sh "$carry"
