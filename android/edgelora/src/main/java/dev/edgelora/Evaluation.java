package dev.edgelora;

/** Scores of a trainer's evaluation examples with its current adapter. */
public final class Evaluation {
    public final int examples;
    /** Mean cross-entropy per answer token. */
    public final double loss;
    /** Share of examples whose whole answer is the greedy prediction. */
    public final double exact;

    Evaluation(int examples, double loss, double exact) {
        this.examples = examples;
        this.loss = loss;
        this.exact = exact;
    }

    @Override
    public String toString() {
        return String.format("%d examples: loss %.4f, exact %.2f", examples, loss, exact);
    }
}
