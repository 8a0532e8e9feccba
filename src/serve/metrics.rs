//! Prometheus metrics of the server (`GET /metrics`, text format), through the
//! `prometheus` crate: requests by endpoint and status, tokens, queue depth, time to
//! first token and per-token latency — by scenario, arm and adapter set — and the
//! batcher's steps, sequences, rows and KV pool use.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub tokens: IntCounterVec,
    pub queue_depth: IntGauge,
    pub running: IntGauge,
    pub ttft: HistogramVec,
    pub token_latency: HistogramVec,
    /// The batcher's counters, copied in at each scrape (absent: one request at a time).
    pub batch_steps: IntGauge,
    pub batch_sequences: IntGauge,
    pub batch_rows: IntGauge,
    pub kv_used: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(Opts::new("edgelora_requests_total", "HTTP requests by endpoint and status"), &["endpoint", "status"]).expect("valid metric");
        let tokens = IntCounterVec::new(Opts::new("edgelora_tokens_total", "Prompt and completion tokens by scenario, arm and adapter names (not scales: bounded label values)"), &["kind", "scenario", "arm", "adapters"]).expect("valid metric");
        let queue_depth = IntGauge::new("edgelora_queue_depth", "Generation requests waiting for the engine").expect("valid metric");
        let running = IntGauge::new("edgelora_batch_size", "Generation requests running on the engine (in the batch; 1 at most on the llama.cpp backend)").expect("valid metric");
        let batch_steps = IntGauge::new("edgelora_batch_steps", "Forward steps the batcher has run").expect("valid metric");
        let batch_sequences = IntGauge::new("edgelora_batch_sequences", "Sequences summed over the batcher's steps (divided by steps: the mean batch)").expect("valid metric");
        let batch_rows = IntGauge::new("edgelora_batch_rows", "Token rows summed over the batcher's steps").expect("valid metric");
        let kv_used = IntGauge::new("edgelora_kv_pool_used_bytes", "KV pool bytes in use (running reservations and the prompt cache)").expect("valid metric");
        let buckets = vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
        let ttft = HistogramVec::new(HistogramOpts::new("edgelora_time_to_first_token_seconds", "Time from the request to its first token").buckets(buckets.clone()), &["scenario", "arm"]).expect("valid metric");
        let token_latency = HistogramVec::new(HistogramOpts::new("edgelora_time_per_output_token_seconds", "Mean time per generated token after the first").buckets(vec![0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64]), &["scenario", "arm"]).expect("valid metric");
        for c in [Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>, Box::new(tokens.clone()), Box::new(queue_depth.clone()), Box::new(running.clone()), Box::new(ttft.clone()), Box::new(token_latency.clone()), Box::new(batch_steps.clone()), Box::new(batch_sequences.clone()), Box::new(batch_rows.clone()), Box::new(kv_used.clone())] {
            registry.register(c).expect("metric registered once");
        }
        Metrics { registry, requests, tokens, queue_depth, running, ttft, token_latency, batch_steps, batch_sequences, batch_rows, kv_used }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding writes to a Vec");
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
