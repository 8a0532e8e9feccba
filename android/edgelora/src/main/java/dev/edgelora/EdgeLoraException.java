package dev.edgelora;

/** A failed call; {@link #status()} is the C API's EdgeloraStatus code. */
public class EdgeLoraException extends RuntimeException {
    public static final int INVALID_ARGUMENT = 1, IO = 2, FORMAT = 3, ADAPTER_MISMATCH = 4, NOT_FOUND = 5,
            ALREADY_EXISTS = 6, CONTEXT_FULL = 7, BACKEND = 8, PANIC = 9, CANCELLED = 10, MEMORY_BUDGET = 11;

    private final int status;

    public EdgeLoraException(int status, String message) {
        super(message);
        this.status = status;
    }

    public int status() {
        return status;
    }
}
