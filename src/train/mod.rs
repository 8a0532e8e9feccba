//! On-device LoRA training on the frozen quantized base (QLoRA-style): data
//! (`data`: JSONL formats, chat template, loss mask, packing), optimizer and schedules
//! (`optim`), the trainer (`trainer`), the automatic recipe search (`auto`), checkpoints (`checkpoint`), the frozen lower layers' states a run computes once (`frozen`), the job an app drives (`job`) and its memory budget (`budget`), evaluation (`eval`) and its
//! business metrics and A/B statistics (`metrics`), and the data report with the
//! grouping behind `--dedup`/`--balance` (`report`).
//! The forward/backward graph itself lives in [`crate::model::grad`].

pub mod auto;
pub mod budget;
pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod frozen;
pub mod job;
pub mod metrics;
pub mod optim;
pub mod parent;
pub mod report;
pub mod trainer;

pub use job::{JobOptions, JobOutcome, Progress, TrainJob};
pub use trainer::{parse_targets, Outcome, StepMetrics, TrainConfig, Trainer};
