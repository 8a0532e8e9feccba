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

    private static native String nativeVersion();
}
