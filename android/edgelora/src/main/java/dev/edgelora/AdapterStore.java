package dev.edgelora;

import java.io.File;

/**
 * Versions of personalized adapters on the device: {@link #save} an exported adapter as
 * name@version (its parent is the version current before), list, load the current one,
 * {@link #rollback} to the previous. Files are written atomically. One process writes a
 * store folder at a time.
 */
public final class AdapterStore {
    static {
        EdgeLora.load();
    }

    private final String dir;

    private AdapterStore(String dir) {
        this.dir = dir;
    }

    /** Opens (creating) a store folder. */
    public static AdapterStore open(File dir) {
        nativeOpen(dir.getPath());
        return new AdapterStore(dir.getPath());
    }

    /** Saves {@code adapter} (a GGUF-LoRA file) as the next version of {@code name} and makes it current. {@code metricsJson} may be null. */
    public int save(String name, File adapter, String metricsJson) {
        return nativeSave(dir, name, adapter.getPath(), metricsJson);
    }

    /** Every version of {@code name} as a JSON array (version, file, parent, created, sha256, data_fingerprint, metrics). */
    public String versionsJson(String name) {
        return nativeVersions(dir, name);
    }

    /** The current version of {@code name} (0 when it has none). */
    public int currentVersion(String name) {
        return nativeCurrent(dir, name);
    }

    /** The file of {@code version} (0 = the current one); NOT_FOUND when there is none. */
    public String path(String name, int version) {
        return nativePath(dir, name, version);
    }

    /** Makes the version current before the current one was saved current again; returns it (NOT_FOUND for the first version). */
    public int rollback(String name) {
        return nativeRollback(dir, name);
    }

    private static native void nativeOpen(String dir);
    private static native int nativeSave(String dir, String name, String adapter, String metricsJson);
    private static native String nativeVersions(String dir, String name);
    private static native int nativeCurrent(String dir, String name);
    private static native String nativePath(String dir, String name, int version);
    private static native int nativeRollback(String dir, String name);
}
