# shellcheck shell=bash
# flint's CUDA build toolchain, for machines without a GPU or a CUDA install.
#
# Use it by sourcing it (bash), once per shell, then build:
#
#     source scripts/cuda-env.sh
#     cargo build --release --features cuda
#
# On first use it puts a CUDA 13.0 compiler, headers and link-time libraries (all from pinned
# NVIDIA wheels on PyPI) under ${FLINT_CUDA_ROOT:-$HOME/.cache/flint/cuda13} (about 1.2 GB) and
# generates a link stub for libcuda.so.1. Later runs find that install and only set variables, so
# sourcing it again is cheap and harmless. It exports:
#   CUDA_HOME, CUDA_ROOT, CUDA_PATH  the assembled toolkit (bin/ include/ lib/ nvvm/)
#   PATH                             with $CUDA_HOME/bin (nvcc) first
#   LIBRARY_PATH                     $CUDA_HOME/lib and the libcuda stub, for the linker
#   CUDA_COMPUTE_CAP=90              Hopper (H100/H200); there is no GPU here to query
#   CUDAFORGE_THREADS                parallel nvcc jobs for candle-kernels (default: nproc)
#
# Why these versions: the GPU machines run driver 580 (CUDA 13.0), whose JIT accepts PTX up to
# ISA 9.0, and the binary loads PyTorch 2.11's cu130 libraries there (cuBLAS 13, cuRAND 10,
# NVRTC 13, cudart 13). An unpinned nvidia-cuda-nvcc would bring a newer 13.x whose PTX the
# driver refuses. CUDA 12 wheels ship no nvcc, and the GPU machines have no CUDA 12 libraries.
#
# libcuda.so.1 belongs to the driver, and no wheel carries it, so a stub with that SONAME (one
# empty function per driver API name in scripts/libcuda_symbols.txt, plus whatever the cudarc in
# ~/.cargo/registry declares) satisfies the linker. It is never loaded: at run time the real
# driver library is used.
#
# Running the binary on the GPU machine: it needs libcuda.so.1 (driver) and libcublas.so.13,
# libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13, libcudart.so.13 (PyTorch's CUDA 13 wheels).
# server/build.rs bakes the usual site-packages locations into the binary's run path; if the
# libraries live somewhere else, point the loader at them before starting flint:
#
#     export LD_LIBRARY_PATH=$(python3 -c 'import nvidia.cu13 as m; print(list(m.__path__)[0])')/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
#
# Knobs: FLINT_CUDA_ROOT (install location), FLINT_CUDA_PYTHON (python3 used to make the venv),
# CUDA_COMPUTE_CAP and CUDAFORGE_THREADS (kept when already set).

if [ -z "${BASH_VERSION:-}" ]; then
  echo "flint cuda-env: this script needs bash (source it from bash)" >&2
  return 1 2>/dev/null || exit 1
fi
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  echo "flint cuda-env: source this script, don't run it:  source ${BASH_SOURCE[0]}" >&2
  exit 1
fi

# The pinned wheel set. Changing it makes the next `source` reinstall.
_FLINT_CUDA_WHEELS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-nvrtc==13.0.88
  nvidia-curand==10.4.0.35
  nvidia-cublas==13.1.0.3
)

_flint_cuda_fail() {
  echo "flint cuda-env: error: $*" >&2
  echo "flint cuda-env: the CUDA toolchain is NOT set up; fix the above and source the script again" >&2
  return 1
}

# Installs the wheels and assembles $root/cuda. Runs only when the stamp is missing or stale.
_flint_cuda_install() {
  local root=$1 here=$2 stamp_want=$3
  local venv=$root/venv cuda=$root/cuda py=${FLINT_CUDA_PYTHON:-python3}

  command -v "$py" >/dev/null 2>&1 || { _flint_cuda_fail "'$py' not found (needed to install the CUDA wheels)"; return 1; }
  command -v gcc >/dev/null 2>&1 || { _flint_cuda_fail "gcc not found (needed to build the libcuda.so.1 link stub)"; return 1; }
  mkdir -p "$root" || { _flint_cuda_fail "cannot create $root (set FLINT_CUDA_ROOT to a writable directory)"; return 1; }

  echo "flint cuda-env: installing the CUDA 13.0 build toolchain into $root (first use only, ~1.2 GB download)" >&2
  rm -f "$root/installed.stamp"
  if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv" || { _flint_cuda_fail "'$py -m venv $venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"; return 1; }
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${_FLINT_CUDA_WHEELS[@]}" \
    || { _flint_cuda_fail "pip could not install the CUDA wheels (${_FLINT_CUDA_WHEELS[*]}); is PyPI reachable?"; return 1; }

  # All these wheels unpack into one namespace package: site-packages/nvidia/cu13/{bin,include,lib,nvvm}.
  local pkg
  pkg=$("$venv/bin/python" -c 'import nvidia.cu13 as m; print(list(m.__path__)[0])') && [ -d "$pkg" ] \
    || { _flint_cuda_fail "the wheels installed but nvidia.cu13 is not importable from $venv"; return 1; }
  [ -x "$pkg/bin/nvcc" ] || { _flint_cuda_fail "no nvcc in $pkg/bin after installing nvidia-cuda-nvcc"; return 1; }

  # A toolkit-shaped tree: bin/ include/ nvvm/ linked through, lib/ with unversioned .so names.
  rm -rf "$cuda" && mkdir -p "$cuda/lib/stubs" || { _flint_cuda_fail "cannot write $cuda"; return 1; }
  ln -s "$pkg/bin" "$cuda/bin" && ln -s "$pkg/include" "$cuda/include" && ln -s "$pkg/nvvm" "$cuda/nvvm" \
    || { _flint_cuda_fail "cannot link the toolkit directories into $cuda"; return 1; }
  local lib name stem
  for lib in "$pkg"/lib/*.so*; do
    [ -e "$lib" ] || continue
    name=${lib##*/}
    ln -sf "$lib" "$cuda/lib/$name"
    stem=${name%%.so*}
    [ -e "$cuda/lib/$stem.so" ] || ln -s "$lib" "$cuda/lib/$stem.so"
  done

  # The libcuda.so.1 link stub: the committed list, plus the names the newest cudarc source declares.
  local list=$here/libcuda_symbols.txt cudarc
  [ -f "$list" ] || { _flint_cuda_fail "missing $list (the driver API names for the libcuda stub)"; return 1; }
  cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-*/src/driver/sys/mod.rs 2>/dev/null | sort -V | tail -n 1)
  {
    grep -E '^cu[A-Za-z0-9_]+$' "$list"
    if [ -n "$cudarc" ]; then
      grep -oE 'pub unsafe fn cu[A-Za-z0-9_]+' "$cudarc" | awk '{print $4}'
    fi
  } | LC_ALL=C sort -u | awk '{print "void " $1 "(void) {}"}' > "$root/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda/lib/stubs/libcuda.so" "$root/libcuda_stub.c" \
    || { _flint_cuda_fail "gcc could not build the libcuda stub from $root/libcuda_stub.c"; return 1; }
  ln -sf libcuda.so "$cuda/lib/stubs/libcuda.so.1"

  printf '%s\n' "$stamp_want" > "$root/installed.stamp"
  echo "flint cuda-env: toolchain ready ($("$cuda/bin/nvcc" --version | tail -n 1))" >&2
}

_flint_cuda_env() {
  local root=${FLINT_CUDA_ROOT:-$HOME/.cache/flint/cuda13}
  local here
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd) || { _flint_cuda_fail "cannot locate scripts/"; return 1; }
  local cuda=$root/cuda stamp_want="${_FLINT_CUDA_WHEELS[*]}"

  if [ "$(cat "$root/installed.stamp" 2>/dev/null)" != "$stamp_want" ] \
    || [ ! -x "$cuda/bin/nvcc" ] || [ ! -f "$cuda/lib/stubs/libcuda.so" ]; then
    _flint_cuda_install "$root" "$here" "$stamp_want" || return 1
  fi

  export CUDA_HOME=$cuda CUDA_ROOT=$cuda CUDA_PATH=$cuda
  case ":$PATH:" in *":$cuda/bin:"*) ;; *) export PATH=$cuda/bin:$PATH ;; esac
  case ":${LIBRARY_PATH:-}:" in
    *":$cuda/lib/stubs:"*) ;;
    *) export LIBRARY_PATH=$cuda/lib:$cuda/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH} ;;
  esac
  export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
  export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-$(nproc 2>/dev/null || echo 2)}
}

_flint_cuda_env
_flint_cuda_env_rc=$?
unset -f _flint_cuda_env _flint_cuda_install _flint_cuda_fail
unset _FLINT_CUDA_WHEELS
# shellcheck disable=SC2317  # `exit` is only reached when the script is executed
return $_flint_cuda_env_rc 2>/dev/null || exit $_flint_cuda_env_rc
