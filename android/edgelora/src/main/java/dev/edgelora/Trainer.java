package dev.edgelora;

import java.io.File;

/**
 * On-device LoRA training on the frozen quantized model: add examples, {@link #run} on a
 * worker thread with progress, {@link #cancel()} from any thread, survive the app being
 * killed (open a new trainer on the same checkpoint directory and data: it continues),
 * {@link #evaluate()}, {@link #export(File)} and load the file with
 * {@link Model#loadAdapter(String, String)} without reopening the model.
 *
 * <p>One thread uses a trainer at a time, except {@link #cancel()}; a call while
 * {@code run} is in progress (or from its listener) throws INVALID_ARGUMENT.
 */
public final class Trainer implements AutoCloseable {
    static {
        EdgeLora.load();
    }

    private long handle;

    private Trainer(long handle) {
        this.handle = handle;
    }

    /** Opens the model for training (checked, its tokenizer loaded) and the checkpoint directory (checked writable). */
    public static Trainer open(String modelPath, TrainConfig c) {
        return new Trainer(nativeOpen(modelPath, c.rank, c.alpha, c.targets, c.learningRate, c.steps, c.epochs, c.batch,
                c.gradAccum, c.maxLen, c.seed, c.threads, c.yieldMs, c.maxMemoryMb, c.gradientCheckpointing,
                c.checkpointDir, c.saveEvery, c.name, c.initAdapter, c.precision.ordinal()));
    }

    /** Adds a training example (tokenized now; an empty answer is a FORMAT error naming it). {@code input} may be null. */
    public void addExample(String instruction, String input, String output) {
        nativeAddExample(live(), instruction, input, output, false);
    }

    /** Adds an evaluation example (scored by {@link #evaluate()}, never trained on). */
    public void addEvalExample(String instruction, String input, String output) {
        nativeAddExample(live(), instruction, input, output, true);
    }

    /**
     * Adds one record as JSON in any of the CLI's four formats ({instruction, input, output},
     * {prompt, completion}, {messages: [{role, content}]}, {text}); {@code eval} puts it in the evaluation set.
     */
    public void addRecordJson(String json, boolean eval) {
        nativeAddRecordJson(live(), json, eval);
    }

    /** Adds every record of a JSONL file in any of the CLI's four formats; returns how many. */
    public int addJsonl(String path) {
        return nativeAddJsonl(live(), path, false);
    }

    public int addEvalJsonl(String path) {
        return nativeAddJsonl(live(), path, true);
    }

    /**
     * Fixes the data and plans the run (steps, memory budget, resume from the checkpoint
     * directory); {@link #run} does it itself. Returns {step reached, total steps}.
     */
    public int[] prepare() {
        return nativePrepare(live());
    }

    /** The peak-memory estimate in MiB the run is planned for (after {@link #prepare()}). */
    public double memoryEstimateMb() {
        return nativeMemoryEstimate(live());
    }

    /**
     * Trains to the last step on this thread. Returns true when finished, false when
     * stopped by the listener or {@link #cancel()} (the checkpoint is saved; call again
     * to continue). {@code listener} may be null.
     */
    public boolean run(TrainingListener listener) {
        return nativeRun(live(), listener);
    }

    /** Stops a running {@link #run} after its current step. Any thread. */
    public void cancel() {
        long h = handle;
        if (h != 0) nativeCancel(h);
    }

    /** Scores the evaluation examples with the adapter as trained so far (the base before training). */
    public Evaluation evaluate() {
        return nativeEvaluate(live());
    }

    /** Writes the adapter as GGUF-LoRA (atomically). */
    public void export(File out) {
        nativeExport(live(), out.getPath(), null);
    }

    /** Writes the adapter as GGUF-LoRA and as a PEFT folder. */
    public void export(File out, File peftDir) {
        nativeExport(live(), out.getPath(), peftDir == null ? null : peftDir.getPath());
    }

    private long live() {
        if (handle == 0) throw new EdgeLoraException(EdgeLoraException.INVALID_ARGUMENT, "the trainer is closed");
        return handle;
    }

    /** Frees the trainer (its checkpoint directory stays). Not while {@link #run} runs. */
    @Override
    public synchronized void close() {
        if (handle != 0) {
            nativeClose(handle);
            handle = 0;
        }
    }

    private static native long nativeOpen(String model, int rank, float alpha, String targets, float lr, int steps,
            int epochs, int batch, int gradAccum, int maxLen, long seed, int threads, int yieldMs, int maxMemoryMb,
            boolean gradientCheckpointing, String checkpointDir, int saveEvery, String name, String initAdapter,
            int precision);
    private static native void nativeAddExample(long h, String instruction, String input, String output, boolean eval);
    private static native void nativeAddRecordJson(long h, String json, boolean eval);
    private static native int nativeAddJsonl(long h, String path, boolean eval);
    private static native int[] nativePrepare(long h);
    private static native double nativeMemoryEstimate(long h);
    private static native boolean nativeRun(long h, TrainingListener listener);
    private static native void nativeCancel(long h);
    private static native Evaluation nativeEvaluate(long h);
    private static native void nativeExport(long h, String out, String peftDir);
    private static native void nativeClose(long h);
}
