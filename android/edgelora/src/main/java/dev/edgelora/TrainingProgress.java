package dev.edgelora;

/** What a {@link TrainingListener} sees after each step. */
public final class TrainingProgress {
    public final int step, totalSteps;
    public final double epoch, loss, learningRate, gradNorm, tokensPerSecond, etaSeconds;

    TrainingProgress(int step, int totalSteps, double epoch, double loss, double learningRate, double gradNorm,
            double tokensPerSecond, double etaSeconds) {
        this.step = step;
        this.totalSteps = totalSteps;
        this.epoch = epoch;
        this.loss = loss;
        this.learningRate = learningRate;
        this.gradNorm = gradNorm;
        this.tokensPerSecond = tokensPerSecond;
        this.etaSeconds = etaSeconds;
    }

    @Override
    public String toString() {
        return String.format("step %d/%d loss %.4f lr %.2e gnorm %.3f %.0f tok/s eta %.0f s", step, totalSteps, loss,
                learningRate, gradNorm, tokensPerSecond, etaSeconds);
    }
}
