package dev.edgelora;

/** A LoRA adapter loaded on a {@link Model}; closing it unloads it. */
public final class Adapter implements AutoCloseable {
    private final Model model;
    private final String name;
    private final String warnings;
    private boolean closed;

    Adapter(Model model, String name, String warnings) {
        this.model = model;
        this.name = name;
        this.warnings = warnings;
    }

    public String name() {
        return name;
    }

    /** What a lenient load let through, one warning per line ("" when none). */
    public String warnings() {
        return warnings;
    }

    @Override
    public synchronized void close() {
        if (!closed) {
            closed = true;
            model.unloadAdapter(name);
        }
    }
}
