package dev.edgelora;

import java.util.ArrayList;
import java.util.List;

/** One request: prompt, the adapters to apply with their scales, sampling, limits. */
public final class GenerateRequest {
    final String prompt;
    boolean chat;
    final List<String> adapterNames = new ArrayList<>();
    final List<Float> adapterScales = new ArrayList<>();
    int maxTokens = 128;
    float temperature = 0f;
    int topK = 0;
    float topP = 1f;
    float minP = 0f;
    float repeatPenalty = 1f;
    long seed = 0;
    Cancellation cancellation;

    public GenerateRequest(String prompt) {
        this.prompt = prompt;
    }

    /** Render the prompt as a user message with the model's chat template. */
    public GenerateRequest chat(boolean chat) { this.chat = chat; return this; }
    /** Apply this adapter at this scale (several may be added). */
    public GenerateRequest adapter(Adapter adapter, float scale) {
        adapterNames.add(adapter.name());
        adapterScales.add(scale);
        return this;
    }
    public GenerateRequest maxTokens(int n) { this.maxTokens = n; return this; }
    /** 0 = greedy. */
    public GenerateRequest temperature(float t) { this.temperature = t; return this; }
    public GenerateRequest topK(int k) { this.topK = k; return this; }
    public GenerateRequest topP(float p) { this.topP = p; return this; }
    public GenerateRequest minP(float p) { this.minP = p; return this; }
    public GenerateRequest repeatPenalty(float r) { this.repeatPenalty = r; return this; }
    public GenerateRequest seed(long s) { this.seed = s; return this; }
    public GenerateRequest cancellation(Cancellation c) { this.cancellation = c; return this; }
}
