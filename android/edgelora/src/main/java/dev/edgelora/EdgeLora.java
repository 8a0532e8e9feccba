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
     * quantized weights and writes a new GGUF to {@code out} (atomically), with the most
     * faithful quantizer the model's types allow ("auto": "gptq" for Q4_0/Q4_1/Q8_0
     * models, which runs the model — minutes, not seconds; pass "refit" for a fast merge).
     */
    public static void merge(String model, String[] adapters, float[] weights, String out) {
        nativeMerge(model, adapters, weights, out, "auto");
    }

    /**
     * {@link #merge(String, String[], float[], String)} with the quantizer chosen:
     * "auto" (the default above), "refit" (per-block smallest error, fast), "ggml" (llama.cpp's reference) or "gptq"
     * (Q4_0/Q4_1/Q8_0 codes and grids for the smallest output error on tokens sampled
     * from the adapted model: the closest to the adapter on the fly, but it runs the
     * model — about two minutes for a 135M model on two cores; it also re-codes the
     * attn_output/ffn_down tensors no adapter targets, same type and size, to take up the
     * merged layers' errors, and needs temporary disk beside {@code out} up to the merged
     * tensors' size).
     */
    public static void merge(String model, String[] adapters, float[] weights, String out, String quantizer) {
        nativeMerge(model, adapters, weights, out, quantizer);
    }

    private static native String nativeVersion();
    private static native void nativeMerge(String model, String[] adapters, float[] weights, String out, String quantizer);
}
