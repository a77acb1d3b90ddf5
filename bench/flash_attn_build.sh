# Build flash-attn from its PyPI sdist on the GPU machine (no prebuilt wheel exists for
# torch 2.11 + CUDA 13). Started in the background by the first command of a lease; the sdist
# travels in .fa/ (git-ignored). Log: /tmp/fa_build.log; success marker: /tmp/fa_built.
set -u
mkdir -p /tmp/fa && tar xzf .fa/flash_attn-*.tar.gz -C /tmp/fa
cd /tmp/fa/flash_attn-*/ || exit 1
start=$(date +%s)
if FLASH_ATTN_CUDA_ARCHS=90 MAX_JOBS=${MAX_JOBS:-12} FLASH_ATTENTION_FORCE_BUILD=TRUE \
   nice -n 19 python3 -m pip install -v --no-build-isolation --no-deps --no-index \
   --target /tmp/fa_site . ; then
  echo "built in $(( $(date +%s) - start )) s" > /tmp/fa_built
else
  echo "failed after $(( $(date +%s) - start )) s" > /tmp/fa_failed
fi
