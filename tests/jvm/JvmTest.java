import dev.edgelora.*;

/** Drives the Java API on the host JVM; run by the test suite (tests/suite/ffi.rs):
 *  java -Djava.library.path=DIR JvmTest MODEL ADAPTER_A ADAPTER_B FOREIGN_ADAPTER UNKNOWN_TARGET_PEFT BAD_MODELS_TSV */
public class JvmTest {
    static void check(boolean ok, String what) {
        if (!ok) {
            System.out.println("FAILED: " + what);
            System.exit(1);
        }
    }

    public static void main(String[] args) throws Exception {
        check(args.length == 6, "usage: JvmTest MODEL A B FOREIGN UNKNOWN_TARGET_PEFT BAD_MODELS_TSV");
        System.out.println("edgelora " + EdgeLora.version());
        try {
            Model.open("/nonexistent/model.gguf", 1, 512);
            check(false, "missing model opened");
        } catch (EdgeLoraException e) {
            check(e.status() == EdgeLoraException.IO && e.getMessage().contains("/nonexistent/model.gguf"), "missing model: " + e);
        }
        // Models whose metadata llama.cpp would abort on: each refused, its key named.
        int nBad = 0;
        for (String line : java.nio.file.Files.readAllLines(java.nio.file.Paths.get(args[5]))) {
            String[] f = line.split("\t", 2);
            if (f.length != 2) continue;
            try {
                Model.open(f[0], 1, 64).close();
                check(false, "bad model opened: " + f[0]);
            } catch (EdgeLoraException e) {
                check(e.status() == EdgeLoraException.FORMAT && e.getMessage().contains(f[1]), "bad model " + f[0] + ": " + e);
            }
            nBad++;
        }
        check(nBad >= 30, "only " + nBad + " bad models");
        try (Model model = Model.open(args[0], 1, 512);
             Adapter a = model.loadAdapter("a", args[1]);
             Adapter b = model.loadAdapter("b", args[2]);
             Cancellation cancel = new Cancellation()) {
            try {
                model.loadAdapter("foreign", args[3]);
                check(false, "foreign adapter loaded");
            } catch (EdgeLoraException e) {
                check(e.status() == EdgeLoraException.ADAPTER_MISMATCH && e.getMessage().contains("qwen2"), "foreign: " + e);
            }
            try {
                model.loadAdapter("wq", args[4]);
                check(false, "unknown target module loaded");
            } catch (EdgeLoraException e) {
                check(e.status() == EdgeLoraException.FORMAT && e.getMessage().contains("\"wq\""), "unknown target: " + e);
            }
            try (Adapter wq = model.loadAdapter("wq", args[4], true)) {
                check(wq.warnings().startsWith("warning: ") && wq.warnings().contains("\"wq\""), "lenient warnings: " + wq.warnings());
            }
            String q = "Tell me about the weather today."; // open-ended: the fixture adapters change the greedy answer
            StringBuilder streamed = new StringBuilder();
            Generation ga = model.generate(new GenerateRequest(q).chat(true).maxTokens(24).adapter(a, 2f), piece -> {
                streamed.append(piece);
                return true;
            });
            Generation gb = model.generate(new GenerateRequest(q).chat(true).maxTokens(24).adapter(b, 2f), null);
            Generation ga2 = model.generate(new GenerateRequest(q).chat(true).maxTokens(24).adapter(a, 2f), null);
            Generation base = model.generate(new GenerateRequest(q).chat(true).maxTokens(24), null);
            System.out.println("base: " + base + "\na: " + ga + "\nb: " + gb);
            check(ga.text.equals(ga2.text), "switching back to a changed its answer");
            check(!ga.text.equals(gb.text) && !ga.text.equals(base.text), "adapters change nothing");
            check(streamed.toString().equals(ga.text), "streamed text differs");
            check(ga.promptTokens > 0 && ga.generatedTokens > 0, "token counts");

            int[] n = {0};
            Generation cut = model.generate(new GenerateRequest(q).chat(true).maxTokens(24).adapter(a, 2f).cancellation(cancel), piece -> {
                if (++n[0] == 3) cancel.cancel();
                return true;
            });
            check(cut.stopReason.equals("CANCELLED") && cut.text.length() < ga.text.length(), "cancel: " + cut.stopReason);
            Generation early = model.generate(new GenerateRequest(q).chat(true).maxTokens(24), piece -> false);
            check(early.stopReason.equals("CANCELLED"), "callback cancel: " + early.stopReason);

            b.close();
            try {
                model.generate(new GenerateRequest(q).adapter(b, 1f), null);
                check(false, "unloaded adapter used");
            } catch (EdgeLoraException e) {
                check(e.status() == EdgeLoraException.NOT_FOUND && e.getMessage().contains("\"b\""), "unloaded: " + e);
            }
            try {
                model.generate(new GenerateRequest(q).chat(true).maxTokens(8), p -> { throw new IllegalStateException("boom"); });
                check(false, "callback exception swallowed");
            } catch (IllegalStateException e) {
                check(e.getMessage().equals("boom"), "callback exception");
            }
        }
        String merged = args[3] + ".merged.gguf";
        EdgeLora.merge(args[0], new String[] {args[1]}, new float[] {2f}, merged, "refit");
        try (Model m = Model.open(merged, 1, 512)) {
            Generation g = m.generate(new GenerateRequest("What is the capital of France?").chat(true).maxTokens(8), null);
            check(!g.text.isEmpty(), "merged model generated nothing");
        }
        EdgeLora.merge(args[0], new String[] {args[1]}, new float[] {2f}, merged + ".ggml", "ggml");
        try (Model m = Model.open(merged + ".ggml", 1, 512)) {
            check(!m.generate(new GenerateRequest("Hi").maxTokens(4), null).text.isEmpty(), "ggml-merged model generated nothing");
        }
        try {
            EdgeLora.merge(args[0], new String[] {args[1]}, new float[] {1f}, merged + "3", "best");
            check(false, "merge with an unknown quantizer succeeded");
        } catch (EdgeLoraException e) {
            check(e.status() == EdgeLoraException.INVALID_ARGUMENT && e.getMessage().contains("best"), "quantizer error: " + e);
        }
        try {
            EdgeLora.merge(args[0], new String[] {"/nonexistent/adapter"}, new float[] {1f}, merged + "2", "refit");
            check(false, "merge of a missing adapter succeeded");
        } catch (EdgeLoraException e) {
            check(e.getMessage().contains("/nonexistent/adapter"), "merge error: " + e);
        }
        System.out.println("all Java API checks passed");
    }
}
