package dev.edgelora;

/** Entry point: loads the native library once. */
public final class EdgeLora {
    static {
        System.loadLibrary("edgelora");
    }

    private EdgeLora() {}

    /** Makes sure the native library is loaded (the other classes call this). */
    static void load() {}

    /** The native library's version, e.g. "0.1.0". */
    public static String version() {
        return nativeVersion();
    }

    /**
     * Merges adapters (GGUF-LoRA files or PEFT folders) with weights into the model's
     * quantized weights and writes a new GGUF to {@code out} (atomically).
     */
    public static void merge(String model, String[] adapters, float[] weights, String out) {
        nativeMerge(model, adapters, weights, out);
    }

    private static native String nativeVersion();
    private static native void nativeMerge(String model, String[] adapters, float[] weights, String out);
}
