# Sourced after bench/device_setup.sh: FlashAttention-4 (flash-attn-4, CuTe DSL) on the GPU
# machine, for bench/attention_impl_probe.py. Its CUDA 13 library
# (nvidia-cutlass-dsl-libs-cu13, 92 MB) is larger than one call may carry (64 MiB), so it travels
# xz-compressed in two halves: .fa4a/ in one call, then .fa4b/ (the other wheels, the second half
# and its checksum) in the next call on the same warm machine, which finds .fa4a/ still there (or
# the copy the first call left in /tmp/fa4a).
first=.fa4a; [ -d "$first" ] || first=/tmp/fa4a
cat "$first"/cu13.part-* .fa4b/cu13.part-* > /tmp/cu13.tar.xz || return 1
(cd /tmp && sha256sum -c "$OLDPWD/.fa4b/cu13.sha256") || return 1
mkdir -p /tmp/fa4site
for w in .fa4b/*.whl; do python3 -m zipfile -e "$w" /tmp/fa4site || return 1; done
tar -xJf /tmp/cu13.tar.xz -C /tmp/fa4site || return 1
export PYTHONPATH=$PYTHONPATH:/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages
