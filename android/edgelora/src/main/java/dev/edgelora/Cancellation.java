package dev.edgelora;

/** Cancels a running request from any thread. Close it after the request has ended. */
public final class Cancellation implements AutoCloseable {
    static {
        EdgeLora.load();
    }

    long handle;

    public Cancellation() {
        handle = nativeNew();
    }

    /** Stops the request using this flag at its next token. */
    public void cancel() {
        nativeTrigger(handle);
    }

    /** Lowers the flag for reuse. */
    public void reset() {
        nativeReset(handle);
    }

    @Override
    public synchronized void close() {
        if (handle != 0) {
            nativeFree(handle);
            handle = 0;
        }
    }

    private static native long nativeNew();
    private static native void nativeTrigger(long handle);
    private static native void nativeReset(long handle);
    private static native void nativeFree(long handle);
}
