#!/usr/bin/env bash
# Build flash-attn from its PyPI sdist on the GPU machine: no prebuilt wheel exists for
# torch 2.11 + CUDA 13. The sdist travels in .fa/ (git-ignored; `pip download --no-deps --no-binary
# :all: flash-attn==2.8.3.post2 -d .fa` here). Installs into $FA_SITE (default /tmp/fa_site).
#
#   bash bench/flash_attn_build.sh            # foreground; exit status is the build's
#   FA_FEATURES=full bash bench/flash_attn_build.sh   # every feature (about 22 min on 16 cores)
#
# By default the build compiles out the features wmtp never uses: dropout inside attention, ALiBi,
# softcapping and local (sliding-window) attention, through flash-attn's own FLASHATTENTION_DISABLE_*
# switches (listed, commented out, in its setup.py). Each switch halves the kernels instantiated per
# compile unit; the library then refuses those arguments with a clear error ("This flash attention
# build does not support dropout."). Causal, varlen, GQA, every head dim, bf16/fp16, forward and
# backward are all built. Progress: compiled units / 73 in $FA_LOG every 30 s.
set -u
# /tmp/fa_build.rc holds the exit status once the build is over, whatever ended it
trap 'echo $? > /tmp/fa_build.rc' EXIT
FA_SITE=${FA_SITE:-/tmp/fa_site}
FA_LOG=${FA_LOG:-/tmp/fa_build.log}
src=/tmp/fa_src
rm -rf "$src" && mkdir -p "$src" && tar xzf .fa/flash_attn-*.tar.gz -C "$src" || exit 1
cd "$src"/flash_attn-*/ || exit 1
if [ "${FA_FEATURES:-wmtp}" != full ]; then
  python3 - <<'EOF' || exit 1
import re
from pathlib import Path

setup = Path("setup.py")
text = setup.read_text()
off = ["DROPOUT", "ALIBI", "SOFTCAP", "LOCAL"]
for name in off:  # setup.py lists each switch commented out in nvcc_flags
    text, n = re.subn(rf'# "-DFLASHATTENTION_DISABLE_{name}"', f'"-DFLASHATTENTION_DISABLE_{name}"', text, count=1)
    assert n == 1, f"FLASHATTENTION_DISABLE_{name} not found in setup.py"
# flash_api.cpp (host compiler) holds the checks that refuse disabled features: give it the switches too
defines = ", ".join(f'"-DFLASHATTENTION_DISABLE_{name}"' for name in off)
text, n = re.subn(r'compiler_c17_flag=\["-O3", "-std=c\+\+17"\]',
                  f'compiler_c17_flag=["-O3", "-std=c++17", {defines}]', text, count=1)
assert n == 1, "compiler_c17_flag not found in setup.py"
setup.write_text(text)
print("flash-attn setup.py: compiled out", ", ".join(off))
EOF
fi
build=$PWD/build
( while sleep 30; do
    echo "$(date +%T) $(find "$build" -name '*.o' 2>/dev/null | wc -l)/73 units compiled"
  done ) >> "$FA_LOG" &
progress=$!
start=$(date +%s)
FLASH_ATTN_CUDA_ARCHS=90 MAX_JOBS=${MAX_JOBS:-16} NVCC_THREADS=1 FLASH_ATTENTION_FORCE_BUILD=TRUE \
  python3 -m pip install -v --no-build-isolation --no-deps --no-index --target "$FA_SITE" . \
  >> "$FA_LOG" 2>&1
rc=$?
kill "$progress" 2>/dev/null
echo "flash-attn build rc=$rc in $(( $(date +%s) - start )) s (features: ${FA_FEATURES:-wmtp})" | tee -a "$FA_LOG"
exit $rc
