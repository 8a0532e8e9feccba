package dev.edgelora;

/** Receives generated text piece by piece; return false to stop generating. */
@FunctionalInterface
public interface TokenCallback {
    boolean onToken(String piece);
}
