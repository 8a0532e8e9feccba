package dev.edgelora;

/** A LoRA adapter loaded on a {@link Model}; closing it unloads it. */
public final class Adapter implements AutoCloseable {
    private final Model model;
    private final String name;
    private boolean closed;

    Adapter(Model model, String name) {
        this.model = model;
        this.name = name;
    }

    public String name() {
        return name;
    }

    @Override
    public synchronized void close() {
        if (!closed) {
            closed = true;
            model.unloadAdapter(name);
        }
    }
}
