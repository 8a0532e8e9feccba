// swift-tools-version:5.9
// The Swift API over edgelora's C ABI. Build the binary first: ./build-xcframework.sh
import PackageDescription

let package = Package(
    name: "EdgeLora",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [.library(name: "EdgeLora", targets: ["EdgeLora"])],
    targets: [
        // Static libedgelora + include/edgelora.h + a module map (module EdgeLoraFFI).
        .binaryTarget(name: "EdgeLoraFFI", path: "build/EdgeLoraFFI.xcframework"),
        .target(name: "EdgeLora", dependencies: ["EdgeLoraFFI"], path: "Sources/EdgeLora",
                linkerSettings: [.linkedLibrary("c++"), .linkedFramework("Accelerate")]),
    ]
)
