import EdgeLoraFFI
import Foundation

/// A failed call: `status` is the C API's EdgeloraStatus, `message` names the cause.
public struct EdgeLoraError: Error, CustomStringConvertible {
    public let status: Int32
    public let message: String
    public var description: String { "edgelora error \(status): \(message)" }

    static func check(_ status: EdgeloraStatus) throws {
        if status != EDGELORA_STATUS_OK {
            throw EdgeLoraError(status: Int32(status.rawValue), message: String(cString: edgelora_last_error()))
        }
    }
}

public enum EdgeLora {
    /// The native library's version.
    public static var version: String { String(cString: edgelora_version()) }

    /// How `merge` writes merged quantized tensors (the C API's `EdgeloraQuantizer`).
    public enum Quantizer: UInt32 {
        /// Per-block smallest error (fast).
        case refit = 0
        /// llama.cpp's reference quantizer.
        case ggml = 1
        /// GPTQ codes and refit grids on tokens sampled from the adapted model: the closest
        /// to the adapter on the fly, but it runs the model (about two minutes for 135M on
        /// two cores). Also re-codes the attn_output/ffn_down tensors no adapter targets
        /// (same type and size) to take up the merged layers' errors; needs temporary disk
        /// beside the output up to the merged tensors' size.
        case gptq = 2
        /// The most faithful one the model's types allow: gptq for Q4_0/Q4_1/Q8_0
        /// models, refit otherwise (the default).
        case auto = 3
    }

    /// Merges adapters (GGUF-LoRA files or PEFT folders) with weights into the model's
    /// quantized weights, writing a new GGUF to `out` (atomically).
    public static func merge(model: String, adapters: [(path: String, weight: Float)], out: String, quantizer: Quantizer = .auto) throws {
        let paths = adapters.map { strdup($0.path) }
        defer { paths.forEach { free($0) } }
        var cPaths: [UnsafePointer<CChar>?] = paths.map { UnsafePointer($0) }
        var weights = adapters.map { $0.weight }
        let status = cPaths.withUnsafeMutableBufferPointer { p in
            weights.withUnsafeMutableBufferPointer { w in
                edgelora_merge_with(model, UnsafePointer(p.baseAddress), UnsafePointer(w.baseAddress), adapters.count, out, quantizer.rawValue)
            }
        }
        try EdgeLoraError.check(status)
    }
}

/// A finished request.
public struct Generation {
    public enum StopReason { case maxTokens, endOfGeneration, stopString, cancelled, contextFull }
    public let text: String
    public let stopReason: StopReason
    public let promptTokens: Int
    public let generatedTokens: Int
}

/// One request: prompt, adapters with scales, sampling and limits.
public struct GenerateRequest {
    public var prompt: String
    public var chat = false
    public var adapters: [(Adapter, Float)] = []
    public var maxTokens = 128
    public var temperature: Float = 0
    public var topK = 0
    public var topP: Float = 1
    public var minP: Float = 0
    public var repeatPenalty: Float = 1
    public var seed: UInt64 = 0
    public init(prompt: String) { self.prompt = prompt }
}

/// Cancels a running request from any thread.
public final class Cancellation: @unchecked Sendable {
    let handle: OpaquePointer
    public init() { handle = edgelora_cancel_new() }
    public func cancel() { edgelora_cancel_trigger(handle) }
    public func reset() { edgelora_cancel_reset(handle) }
    deinit { edgelora_cancel_free(handle) }
}

/// A LoRA adapter loaded on a model; `close()` (or deinit) unloads it.
public final class Adapter {
    public let name: String
    /// What a lenient load let through, one warning per line ("" when none).
    public let warnings: String
    weak var model: Model?
    private var closed = false
    init(model: Model, name: String, warnings: String = "") { self.model = model; self.name = name; self.warnings = warnings }
    public func close() {
        guard !closed else { return }
        closed = true
        try? model?.unloadAdapter(name)
    }
    deinit { close() }
}

/// A memory-mapped GGUF model with named adapters. Thread-safe (requests run one at a time).
public final class Model: @unchecked Sendable {
    let handle: OpaquePointer

    /// threads 0 = all cores; contextLength 0 = 2048.
    public init(path: String, threads: UInt32 = 0, contextLength: UInt32 = 0) throws {
        var opts = edgelora_runtime_options_default()
        opts.threads = threads
        opts.n_ctx = contextLength
        var out: OpaquePointer?
        try EdgeLoraError.check(edgelora_runtime_open(path, &opts, &out))
        handle = out!
    }

    deinit { edgelora_runtime_close(handle) }

    /// Loads a GGUF-LoRA file or a PEFT folder under `name`.
    /// With `lenient`, a PEFT config whose target_modules name modules the model does
    /// not have loads anyway, its warnings in `Adapter.warnings` (without, it throws).
    public func loadAdapter(name: String, path: String, lenient: Bool = false) throws -> Adapter {
        if lenient {
            try EdgeLoraError.check(edgelora_adapter_load_lenient(handle, name, path))
            return Adapter(model: self, name: name, warnings: String(cString: edgelora_last_error()))
        }
        try EdgeLoraError.check(edgelora_adapter_load(handle, name, path))
        return Adapter(model: self, name: name)
    }

    func unloadAdapter(_ name: String) throws {
        try EdgeLoraError.check(edgelora_adapter_unload(handle, name))
    }

    /// Runs a request, calling `onToken` with each piece (return false to stop).
    public func generate(_ req: GenerateRequest, cancellation: Cancellation? = nil,
                         onToken: ((String) -> Bool)? = nil) throws -> Generation {
        final class Box { let f: ((String) -> Bool)?; init(_ f: ((String) -> Bool)?) { self.f = f } }
        let box = Box(onToken)
        let names = req.adapters.map { strdup($0.0.name) }
        defer { names.forEach { free($0) } }
        var cNames: [UnsafePointer<CChar>?] = names.map { UnsafePointer($0) }
        var scales = req.adapters.map { $0.1 }
        var result = EdgeloraGenerateResult()
        let status: EdgeloraStatus = req.prompt.withCString { prompt in
            cNames.withUnsafeMutableBufferPointer { np in
                scales.withUnsafeMutableBufferPointer { sp in
                    var p = edgelora_generate_params_default()
                    p.prompt = prompt
                    p.chat = req.chat
                    p.adapter_names = UnsafePointer(np.baseAddress)
                    p.adapter_scales = UnsafePointer(sp.baseAddress)
                    p.n_adapters = req.adapters.count
                    p.max_tokens = UInt32(req.maxTokens)
                    p.temperature = req.temperature
                    p.top_k = UInt32(req.topK)
                    p.top_p = req.topP
                    p.min_p = req.minP
                    p.repeat_penalty = req.repeatPenalty
                    p.seed = req.seed
                    p.cancel = cancellation.map { UnsafePointer($0.handle) }
                    let user = Unmanaged.passUnretained(box).toOpaque()
                    return edgelora_runtime_generate(handle, &p, { piece, user in
                        let box = Unmanaged<Box>.fromOpaque(user!).takeUnretainedValue()
                        return box.f?(String(cString: piece!)) ?? true
                    }, user, &result)
                }
            }
        }
        try EdgeLoraError.check(status)
        defer { edgelora_string_free(result.text) }
        let reason: Generation.StopReason
        switch result.stop_reason {
        case EDGELORA_STOP_REASON_END_OF_GENERATION: reason = .endOfGeneration
        case EDGELORA_STOP_REASON_STOP_STRING: reason = .stopString
        case EDGELORA_STOP_REASON_CANCELLED: reason = .cancelled
        case EDGELORA_STOP_REASON_CONTEXT_FULL: reason = .contextFull
        default: reason = .maxTokens
        }
        return Generation(text: String(cString: result.text), stopReason: reason,
                          promptTokens: Int(result.n_prompt_tokens), generatedTokens: Int(result.n_generated_tokens))
    }

    /// The request's text as an AsyncThrowingStream of pieces; cancelling the consuming
    /// task cancels the request.
    public func stream(_ req: GenerateRequest) -> AsyncThrowingStream<String, Error> {
        AsyncThrowingStream { continuation in
            let cancel = Cancellation()
            continuation.onTermination = { _ in cancel.cancel() }
            Thread.detachNewThread {
                do {
                    _ = try self.generate(req, cancellation: cancel) { piece in
                        continuation.yield(piece)
                        return true
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
        }
    }
}
