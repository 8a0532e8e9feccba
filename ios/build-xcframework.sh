#!/usr/bin/env bash
# Builds build/EdgeLoraFFI.xcframework (device arm64 + simulator arm64/x86_64) from the
# Rust crate, with the C header and a module map. Needs macOS with Xcode and the Rust
# targets: rustup target add aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$here/.."
out="$here/build"
target_dir="${CARGO_TARGET_DIR:-$root/target}"

for t in aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios; do
  # No JNI on iOS.
  cargo build --manifest-path "$root/Cargo.toml" --release --no-default-features --features llama --lib --target "$t"
done

rm -rf "$out" && mkdir -p "$out/headers" "$out/sim"
cp "$root/include/edgelora.h" "$out/headers/"
cat > "$out/headers/module.modulemap" <<'MAP'
module EdgeLoraFFI {
    header "edgelora.h"
    export *
}
MAP
lipo -create \
  "$target_dir/aarch64-apple-ios-sim/release/libedgelora.a" \
  "$target_dir/x86_64-apple-ios/release/libedgelora.a" \
  -output "$out/sim/libedgelora.a"
xcodebuild -create-xcframework \
  -library "$target_dir/aarch64-apple-ios/release/libedgelora.a" -headers "$out/headers" \
  -library "$out/sim/libedgelora.a" -headers "$out/headers" \
  -output "$out/EdgeLoraFFI.xcframework"
echo "built $out/EdgeLoraFFI.xcframework"
