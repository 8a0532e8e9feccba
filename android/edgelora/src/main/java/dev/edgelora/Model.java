package dev.edgelora;

/**
 * A quantized GGUF model, memory-mapped, with named LoRA adapters. Thread-safe: requests
 * run one at a time. Close it to free the native memory (adapters go with it).
 */
public final class Model implements AutoCloseable {
    static {
        EdgeLora.load();
    }

    private long handle;

    private Model(long handle) {
        this.handle = handle;
    }

    /** Opens a model; threads 0 = all cores, contextLength 0 = 2048. */
    public static Model open(String path, int threads, int contextLength) {
        return new Model(nativeOpen(path, threads, contextLength));
    }

    /** Loads a GGUF-LoRA file or a PEFT folder under {@code name}; the model is not reloaded. */
    public synchronized Adapter loadAdapter(String name, String path) {
        return loadAdapter(name, path, false);
    }

    /**
     * {@link #loadAdapter(String, String)}; with {@code lenient}, a PEFT config whose
     * target_modules name modules the model does not have loads anyway, its warnings in
     * {@link Adapter#warnings()} (without, it is an error).
     */
    public synchronized Adapter loadAdapter(String name, String path, boolean lenient) {
        String warnings = nativeLoadAdapter(live(), name, path, lenient);
        return new Adapter(this, name, warnings == null ? "" : warnings);
    }

    synchronized void unloadAdapter(String name) {
        if (handle != 0) {
            nativeUnloadAdapter(handle, name);
        }
    }

    /** Runs a request, streaming pieces to {@code callback} (may be null). */
    public Generation generate(GenerateRequest r, TokenCallback callback) {
        String[] names = r.adapterNames.toArray(new String[0]);
        float[] scales = new float[r.adapterScales.size()];
        for (int i = 0; i < scales.length; i++) scales[i] = r.adapterScales.get(i);
        long cancel = r.cancellation == null ? 0 : r.cancellation.handle;
        return nativeGenerate(live(), r.prompt, r.chat, names, scales, r.maxTokens, r.temperature, r.topK, r.topP,
                r.minP, r.repeatPenalty, r.seed, cancel, callback);
    }

    private long live() {
        if (handle == 0) throw new EdgeLoraException(EdgeLoraException.INVALID_ARGUMENT, "the model is closed");
        return handle;
    }

    @Override
    public synchronized void close() {
        if (handle != 0) {
            nativeClose(handle);
            handle = 0;
        }
    }

    private static native long nativeOpen(String path, int threads, int nCtx);
    private static native void nativeClose(long handle);
    private static native String nativeLoadAdapter(long handle, String name, String path, boolean lenient);
    private static native void nativeUnloadAdapter(long handle, String name);
    private static native Generation nativeGenerate(long handle, String prompt, boolean chat, String[] names,
            float[] scales, int maxTokens, float temperature, int topK, float topP, float minP, float repeatPenalty,
            long seed, long cancel, TokenCallback callback);
}
