import dev.edgelora.*;

import java.io.File;
import java.util.concurrent.atomic.AtomicInteger;

/** The personalization loop through the Java API on the host JVM; run by the test suite
 *  (tests/suite/ffi.rs): java -Djava.library.path=DIR JvmTrainTest MODEL WORK_DIR
 *  collect examples → train (listener, cancel, a listener exception) → evaluate →
 *  export → load into an open model → generate → store versions → roll back. */
public class JvmTrainTest {
    static final String INSTRUCTION = "Decide on this loan application. Answer with one word: approve or reject.";

    static void check(boolean ok, String what) {
        if (!ok) {
            System.out.println("FAILED: " + what);
            System.exit(1);
        }
    }

    static String[] record(int k) {
        int score = 520 + (k * 37) % 300, dti = 10 + (k * 13) % 45;
        String answer = (score >= 650 && dti <= 35) ? "approve" : "reject";
        return new String[] {"Credit score: " + score + "\nDebt-to-income: " + dti + "%", answer};
    }

    static Trainer open(String model, File ckpt) {
        TrainConfig c = TrainConfig.builder().rank(4).alpha(8).targets("q_proj,v_proj").learningRate(1e-2f).steps(6)
                .batch(2).maxLen(96).seed(7).checkpointDir(ckpt.getPath()).saveEvery(1).name("credit").build();
        Trainer t = Trainer.open(model, c);
        for (int i = 0; i < 8; i++) {
            String[] r = record(i);
            t.addExample(INSTRUCTION, r[0], r[1]);
        }
        for (int i = 0; i < 4; i++) {
            String[] r = record(100 + i);
            t.addEvalExample(INSTRUCTION, r[0], r[1]);
        }
        return t;
    }

    static String ask(Model m, Adapter adapter, String input) {
        GenerateRequest r = new GenerateRequest(INSTRUCTION + "\n\n" + input).chat(true).maxTokens(6);
        if (adapter != null) r.adapter(adapter, 1.0f);
        return m.generate(r, null).text;
    }

    public static void main(String[] args) throws Exception {
        check(args.length == 2, "usage: JvmTrainTest MODEL WORK_DIR");
        String model = args[0];
        File work = new File(args[1]);

        // Bad input: an example without an answer, an unwritable checkpoint directory.
        File notes = new File(work, "notes.txt");
        java.nio.file.Files.write(notes.toPath(), "not a model".getBytes());
        try {
            Trainer.open(notes.getPath(), TrainConfig.builder().build());
            check(false, "a text file opened as a model");
        } catch (EdgeLoraException e) {
            check(e.getMessage().contains("notes.txt"), "not a model: " + e);
        }
        try {
            Trainer.open(model, TrainConfig.builder().checkpointDir(new File(notes, "ckpt").getPath()).build());
            check(false, "unwritable checkpoint dir accepted");
        } catch (EdgeLoraException e) {
            check(e.status() == EdgeLoraException.FORMAT && e.getMessage().contains("checkpoint"), "unwritable: " + e);
        }

        // A listener exception stops training and propagates; the checkpoint is saved.
        File ckpt = new File(work, "ckpt");
        try (Trainer t = open(model, ckpt)) {
            try {
                t.addExample(INSTRUCTION, "Credit score: 700", "");
                check(false, "an empty answer was accepted");
            } catch (EdgeLoraException e) {
                check(e.status() == EdgeLoraException.FORMAT && e.getMessage().contains("output"), "empty answer: " + e);
            }
            try {
                t.addRecordJson("{\"text\": 3}", false);
                check(false, "a bad JSON record was accepted");
            } catch (EdgeLoraException e) {
                check(e.status() == EdgeLoraException.FORMAT && e.getMessage().contains("text"), "bad record: " + e);
            }
            Evaluation before = t.evaluate(); // the base: no step yet
            try {
                t.run(p -> {
                    throw new IllegalStateException("listener failed at step " + p.step);
                });
                check(false, "the listener's exception was swallowed");
            } catch (IllegalStateException e) {
                check(e.getMessage().equals("listener failed at step 1"), "listener exception: " + e);
            }
            check(new File(ckpt, "checkpoint.safetensors").exists(), "no checkpoint after the listener threw");
            check(t.prepare()[0] == 1, "the trainer stopped at step " + t.prepare()[0]);

            // Cancel from another thread, then continue to the end.
            AtomicInteger steps = new AtomicInteger();
            Thread canceller = new Thread(() -> {
                while (steps.get() < 2) Thread.onSpinWait();
                t.cancel();
            });
            canceller.start();
            boolean finished = t.run(p -> {
                steps.set(p.step);
                return true;
            });
            canceller.join();
            check(!finished && t.prepare()[0] < 6, "cancel from a thread: finished=" + finished);
            check(t.run(null), "continued run did not finish");
            Evaluation after = t.evaluate();
            check(after.examples == 4 && after.loss < before.loss, "evaluation " + before + " -> " + after);
            System.out.println("evaluation " + before + " -> " + after + ", memory estimate " + Math.round(t.memoryEstimateMb()) + " MiB");
            t.export(new File(work, "v1.gguf"));
        }

        // A second version continues the first (its rank and targets come from it), into
        // the store; load, generate, roll back.
        File ckpt2 = new File(work, "ckpt2");
        // It trains with bf16 base products (emulated where the CPU lacks AVX512-BF16); the
        // manifest's hyperparameters record the precision.
        try (Trainer t = Trainer.open(model, TrainConfig.builder().learningRate(5e-3f).steps(3).batch(2)
                .maxLen(96).seed(8).checkpointDir(ckpt2.getPath()).initAdapter(new File(work, "v1.gguf").getPath())
                .precision(TrainConfig.Precision.BF16).build())) {
            for (int i = 0; i < 8; i++) {
                String[] r = record(i);
                t.addExample(INSTRUCTION, r[0], r[1]);
            }
            check(t.run(null), "second training did not finish");
            t.export(new File(work, "v2.gguf"));
        }
        String v2 = new String(java.nio.file.Files.readAllBytes(new File(work, "v2.gguf").toPath()), java.nio.charset.StandardCharsets.ISO_8859_1);
        check(v2.contains("\"precision\":\"bf16\""), "v2's manifest does not record bf16");
        AdapterStore store = AdapterStore.open(new File(work, "store"));
        check(store.save("credit", new File(work, "v1.gguf"), "{\"note\": \"first\"}") == 1, "store v1");
        check(store.save("credit", new File(work, "v2.gguf"), null) == 2, "store v2");
        check(store.currentVersion("credit") == 2 && store.versionsJson("credit").contains("\"parent\":1"), store.versionsJson("credit"));
        try (Model m = Model.open(model, 1, 512)) {
            String[] r = record(200);
            String base = ask(m, null, r[0]);
            try (Adapter a = m.loadAdapter("credit", store.path("credit", 0))) {
                String tuned = ask(m, a, r[0]);
                System.out.println("base: " + base.trim() + " | v2: " + tuned.trim());
                check(!tuned.equals(base), "the adapter answers as the base: " + tuned);
            }
            check(store.rollback("credit") == 1, "roll back");
            try (Adapter a = m.loadAdapter("credit", store.path("credit", 0))) {
                check(store.path("credit", 0).endsWith("v1.gguf"), "current after roll-back: " + store.path("credit", 0));
                System.out.println("v1 after roll-back: " + ask(m, a, r[0]).trim());
            }
        }
        try {
            store.rollback("credit");
            check(false, "rolled back past the first version");
        } catch (EdgeLoraException e) {
            check(e.status() == EdgeLoraException.NOT_FOUND, "rollback past v1: " + e);
        }
        System.out.println("all Java training checks passed");
    }
}
