package dev.edgelora;

/**
 * How a {@link Trainer} trains; build one with {@link #builder()}. Defaults are the
 * CLI's: rank 16, alpha 32, q_proj,v_proj, learning rate 3e-4, one epoch, batch 8.
 */
public final class TrainConfig {
    final int rank, steps, epochs, batch, gradAccum, maxLen, threads, yieldMs, maxMemoryMb, saveEvery;
    final float alpha, learningRate;
    final long seed;
    final boolean gradientCheckpointing;
    final String targets, checkpointDir, name, initAdapter;
    final Precision precision;

    /**
     * Precision of the products with the frozen base (the C API's EDGELORA_PRECISION_*, in
     * that order): F32; BF16 (bf16 operands, f32 sums, factors and optimizer state;
     * emulated, slower, on a CPU without AVX512-BF16); AUTO (BF16 where the CPU has AMX
     * tiles, where it is faster; else F32).
     */
    public enum Precision { F32, BF16, AUTO }

    private TrainConfig(Builder b) {
        rank = b.rank; steps = b.steps; epochs = b.epochs; batch = b.batch; gradAccum = b.gradAccum; maxLen = b.maxLen;
        threads = b.threads; yieldMs = b.yieldMs; maxMemoryMb = b.maxMemoryMb; saveEvery = b.saveEvery;
        alpha = b.alpha; learningRate = b.learningRate; seed = b.seed; gradientCheckpointing = b.gradientCheckpointing;
        targets = b.targets; checkpointDir = b.checkpointDir; name = b.name; initAdapter = b.initAdapter;
        precision = b.precision;
    }

    public static Builder builder() {
        return new Builder();
    }

    public static final class Builder {
        private int rank = 16, steps = 0, epochs = 1, batch = 8, gradAccum = 1, maxLen = 512, threads = 0, yieldMs = 0,
                maxMemoryMb = 0, saveEvery = 10;
        private float alpha = 32f, learningRate = 3e-4f;
        private long seed = 42;
        private boolean gradientCheckpointing = false;
        private String targets = "q_proj,v_proj", checkpointDir = null, name = null, initAdapter = null;
        private Precision precision = Precision.F32;

        /** LoRA rank; the update is scaled by alpha / rank. */
        public Builder rank(int v) { rank = v; return this; }
        public Builder alpha(float v) { alpha = v; return this; }
        /** Comma-separated modules (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj) or "all-linear". */
        public Builder targets(String v) { targets = v; return this; }
        /** Peak learning rate (cosine schedule, 3% warm-up). */
        public Builder learningRate(float v) { learningRate = v; return this; }
        /** Optimizer steps; 0 = {@link #epochs(int)} passes over the data. */
        public Builder steps(int v) { steps = v; return this; }
        public Builder epochs(int v) { epochs = v; return this; }
        /** Examples per step. */
        public Builder batch(int v) { batch = v; return this; }
        public Builder gradAccum(int v) { gradAccum = v; return this; }
        /** Tokens per example; longer ones are cut. */
        public Builder maxLen(int v) { maxLen = v; return this; }
        public Builder seed(long v) { seed = v; return this; }
        /** CPU threads (0 = all cores). */
        public Builder threads(int v) { threads = v; return this; }
        /** Milliseconds to sleep between steps (thermal headroom). */
        public Builder yieldMs(int v) { yieldMs = v; return this; }
        /** Peak-memory budget in MiB (0 = none): fitted with checkpointing or smaller micro-batches, or refused before step 1. */
        public Builder maxMemoryMb(int v) { maxMemoryMb = v; return this; }
        public Builder gradientCheckpointing(boolean v) { gradientCheckpointing = v; return this; }
        /** Checkpoint directory: a trainer opened on one holding its checkpoint continues from it (after the app was killed). */
        public Builder checkpointDir(String v) { checkpointDir = v; return this; }
        /** Save a checkpoint every N steps (always when stopped and at the end). */
        public Builder saveEvery(int v) { saveEvery = v; return this; }
        /** Adapter name written in the exported manifest. */
        public Builder name(String v) { name = v; return this; }
        /**
         * Continue this adapter (an exported file, e.g. the store's current version):
         * training starts from its factors, its rank/alpha/targets replace this config's,
         * and the manifest records it as the parent.
         */
        public Builder initAdapter(String v) { initAdapter = v; return this; }
        /** Precision of the products with the frozen base (default F32). */
        public Builder precision(Precision v) { precision = v; return this; }

        public TrainConfig build() {
            return new TrainConfig(this);
        }
    }
}
