import EdgeLoraFFI
import Foundation

/// How a `Trainer` trains (the C API's `EdgeloraTrainParams`; defaults are the CLI's).
public struct TrainConfig: Sendable {
    public var rank: UInt32 = 16
    public var alpha: Float = 32
    /// Comma-separated modules (q_proj, …, down_proj) or "all-linear".
    public var targets = "q_proj,v_proj"
    public var learningRate: Float = 3e-4
    /// Optimizer steps; 0 = `epochs` passes over the data.
    public var steps: UInt32 = 0
    public var epochs: UInt32 = 1
    public var batch: UInt32 = 8
    public var gradAccum: UInt32 = 1
    public var maxLen: UInt32 = 512
    public var seed: UInt64 = 42
    /// CPU threads (0 = all cores).
    public var threads: UInt32 = 0
    /// Milliseconds to sleep between steps (thermal headroom).
    public var yieldMs: UInt32 = 0
    /// Peak-memory budget in MiB (0 = none): fitted or refused before step 1.
    public var maxMemoryMB: UInt32 = 0
    public var gradientCheckpointing = false
    /// A trainer opened on a directory holding its checkpoint continues from it.
    public var checkpointDir: String? = nil
    public var saveEvery: UInt32 = 10
    /// Adapter name written in the exported manifest.
    public var name: String? = nil
    /// Continue this adapter: its factors start training, its rank/alpha/targets apply,
    /// and the manifest records it as the parent.
    public var initAdapter: String? = nil
    /// Precision of the products with the frozen base (default f32).
    public var precision: Precision = .f32
    public init() {}
}

/// The C API's `EDGELORA_PRECISION_*`: f32; bf16 (bf16 operands, f32 sums, factors and
/// optimizer state; emulated, slower, on a CPU without AVX512-BF16); auto (bf16 where the
/// CPU has AMX tiles, where it is faster; else f32).
public enum Precision: UInt32, Sendable {
    case f32 = 0, bf16 = 1, auto = 2
}

/// One step's progress.
public struct TrainingProgress: Sendable {
    public let step: Int, totalSteps: Int
    public let epoch: Double, loss: Double, learningRate: Double, gradNorm: Double, tokensPerSecond: Double, etaSeconds: Double
}

/// Scores of the evaluation examples with the current adapter.
public struct Evaluation: Sendable {
    public let examples: Int
    public let loss: Double
    /// Share of examples whose whole answer is the greedy prediction.
    public let exact: Double
}

/// On-device LoRA training (the C API's `edgelora_train_*`). Train with `progress()`, an
/// `AsyncThrowingStream` that runs the steps on a background thread; cancelling the
/// consuming `Task` stops training after the current step (the checkpoint is saved and a
/// later `progress()` continues). A trainer opened on the same checkpoint directory and
/// data after the app was killed continues where the checkpoint was written.
public final class Trainer: @unchecked Sendable {
    let handle: OpaquePointer
    private let lock = NSLock()

    public init(model: String, config: TrainConfig = TrainConfig()) throws {
        var p = edgelora_train_params_default()
        p.rank = config.rank; p.alpha = config.alpha; p.lr = config.learningRate
        p.steps = config.steps; p.epochs = config.epochs; p.batch = config.batch; p.grad_accum = config.gradAccum
        p.max_len = config.maxLen; p.seed = config.seed; p.threads = config.threads; p.yield_ms = config.yieldMs
        p.max_memory_mb = config.maxMemoryMB; p.grad_checkpoint = config.gradientCheckpointing; p.save_every = config.saveEvery
        p.precision = config.precision.rawValue
        let targets = strdup(config.targets)
        let ckpt = config.checkpointDir.map { strdup($0) }
        let name = config.name.map { strdup($0) }
        let initAdapter = config.initAdapter.map { strdup($0) }
        defer { free(targets); ckpt.map { free($0) }; name.map { free($0) }; initAdapter.map { free($0) } }
        p.targets = UnsafePointer(targets)
        p.checkpoint_dir = ckpt.map { UnsafePointer($0) } ?? nil
        p.name = name.map { UnsafePointer($0) } ?? nil
        p.init_adapter = initAdapter.map { UnsafePointer($0) } ?? nil
        var out: OpaquePointer?
        try EdgeLoraError.check(edgelora_train_open(model, &p, &out))
        handle = out!
    }

    deinit { edgelora_train_close(handle) }

    /// Adds a training example (tokenized now; an empty answer throws naming it).
    public func addExample(instruction: String, input: String? = nil, output: String) throws {
        try EdgeLoraError.check(edgelora_train_add_example(handle, instruction, input, output))
    }

    /// Adds an evaluation example (scored by `evaluate()`, never trained on).
    public func addEvalExample(instruction: String, input: String? = nil, output: String) throws {
        try EdgeLoraError.check(edgelora_train_add_eval_example(handle, instruction, input, output))
    }

    /// Adds one record as JSON in any of the CLI's four formats.
    public func addRecordJSON(_ json: String, evaluation: Bool = false) throws {
        try EdgeLoraError.check(edgelora_train_add_record_json(handle, json, evaluation))
    }

    /// Adds every record of a JSONL file (any of the CLI's four formats).
    public func addJSONL(path: String, evaluation: Bool = false) throws {
        try EdgeLoraError.check(evaluation ? edgelora_train_add_eval_jsonl(handle, path) : edgelora_train_add_jsonl(handle, path))
    }

    /// Stops a running training after its current step (any thread).
    public func cancel() { edgelora_train_cancel(handle) }

    /// Trains to the last step, yielding each step's progress. Finishes when training
    /// does; cancelling the consuming Task cancels training (the stream then ends
    /// without error: call `progress()` again to continue).
    public func progress() -> AsyncThrowingStream<TrainingProgress, Error> {
        AsyncThrowingStream { continuation in
            final class Box { let c: AsyncThrowingStream<TrainingProgress, Error>.Continuation; init(_ c: AsyncThrowingStream<TrainingProgress, Error>.Continuation) { self.c = c } }
            let box = Unmanaged.passRetained(Box(continuation))
            continuation.onTermination = { [handle] termination in
                if case .cancelled = termination { edgelora_train_cancel(handle) }
            }
            Thread.detachNewThread { [self] in
                lock.lock()
                defer { lock.unlock(); box.release() }
                let status = edgelora_train_run(handle, { p, user in
                    guard let p = p?.pointee, let user = user else { return true }
                    let c = Unmanaged<Box>.fromOpaque(user).takeUnretainedValue().c
                    c.yield(TrainingProgress(step: Int(p.step), totalSteps: Int(p.total_steps), epoch: p.epoch, loss: p.loss,
                                             learningRate: p.lr, gradNorm: p.grad_norm, tokensPerSecond: p.tokens_per_s,
                                             etaSeconds: p.eta_secs))
                    return true
                }, box.toOpaque())
                if status == EDGELORA_STATUS_OK || status == EDGELORA_STATUS_CANCELLED {
                    continuation.finish()
                } else {
                    continuation.finish(throwing: EdgeLoraError(status: Int32(status.rawValue), message: String(cString: edgelora_last_error())))
                }
            }
        }
    }

    /// Scores the evaluation examples with the adapter as trained so far.
    public func evaluate() throws -> Evaluation {
        var e = EdgeloraEvaluation()
        try EdgeLoraError.check(edgelora_train_evaluate(handle, &e))
        return Evaluation(examples: Int(e.n_examples), loss: e.loss, exact: e.exact)
    }

    /// Writes the adapter as GGUF-LoRA (and a PEFT folder when `peftDir` is given);
    /// load it with `Model.loadAdapter` without reopening the model.
    public func export(to path: String, peftDir: String? = nil) throws {
        try EdgeLoraError.check(edgelora_train_export(handle, path, peftDir))
    }
}

/// Versions of adapters on the device (the C API's `edgelora_store_*`).
public final class AdapterStore {
    let handle: OpaquePointer

    public init(directory: String) throws {
        var out: OpaquePointer?
        try EdgeLoraError.check(edgelora_store_open(directory, &out))
        handle = out!
    }

    deinit { edgelora_store_close(handle) }

    /// Saves an exported adapter as the next version of `name` and makes it current.
    @discardableResult
    public func save(name: String, adapter: String, metricsJSON: String? = nil) throws -> UInt32 {
        var v: UInt32 = 0
        try EdgeLoraError.check(edgelora_store_save(handle, name, adapter, metricsJSON, &v, nil))
        return v
    }

    /// The versions as JSON and the current version (0 when none).
    public func versions(name: String) throws -> (json: String, current: UInt32) {
        var cur: UInt32 = 0
        var json: UnsafeMutablePointer<CChar>?
        try EdgeLoraError.check(edgelora_store_list(handle, name, &cur, &json))
        defer { edgelora_string_free(json) }
        return (String(cString: json!), cur)
    }

    /// The file of `version` (0 = current).
    public func path(name: String, version: UInt32 = 0) throws -> String {
        var p: UnsafeMutablePointer<CChar>?
        try EdgeLoraError.check(edgelora_store_path(handle, name, version, &p))
        defer { edgelora_string_free(p) }
        return String(cString: p!)
    }

    /// Rolls back to the version current before; returns it and its file.
    public func rollback(name: String) throws -> (version: UInt32, path: String) {
        var v: UInt32 = 0
        var p: UnsafeMutablePointer<CChar>?
        try EdgeLoraError.check(edgelora_store_rollback(handle, name, &v, &p))
        defer { edgelora_string_free(p) }
        return (v, String(cString: p!))
    }
}
