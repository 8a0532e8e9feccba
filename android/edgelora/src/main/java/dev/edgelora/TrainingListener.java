package dev.edgelora;

/**
 * Progress of {@link Trainer#run(TrainingListener)}, called on the training thread after
 * each step. Return false to stop (the checkpoint is saved; run again to continue). An
 * exception thrown here stops training too and propagates out of {@code run}.
 */
public interface TrainingListener {
    boolean onProgress(TrainingProgress progress);
}
