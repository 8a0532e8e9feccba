package dev.edgelora;

/** A finished request. stopReason is MAX_TOKENS, END_OF_GENERATION, STOP_STRING, CANCELLED or CONTEXT_FULL. */
public final class Generation {
    public final String text;
    public final String stopReason;
    public final int promptTokens;
    public final int generatedTokens;

    Generation(String text, String stopReason, int promptTokens, int generatedTokens) {
        this.text = text;
        this.stopReason = stopReason;
        this.promptTokens = promptTokens;
        this.generatedTokens = generatedTokens;
    }

    @Override
    public String toString() {
        return text;
    }
}
