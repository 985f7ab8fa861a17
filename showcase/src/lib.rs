//! The `latchless` showcase: a byte-level LSTM and a small transformer, built with candle from
//! seeded random weights, served to many client threads through [`latchless::batch::Batcher`],
//! with each session's model state kept in a [`latchless::cache::Cache`].
//!
//! Run it with `cargo run --release --example batcher` from the workspace root.
//!
//! - [`model`]: the [`LanguageModel`](model::LanguageModel) contract and batched
//!   [`generate`](model::generate).
//! - [`lstm`] and [`transformer`]: the two models.
//! - [`serve`]: requests, replies, the session cache and the batch handler.
//! - [`continuous`]: the step handler of continuous batching, which streams each byte.
//! - [`workload`]: the three ways of serving the same workload that the example compares.

#![warn(missing_docs, missing_debug_implementations)]

pub mod continuous;
pub mod lstm;
pub mod model;
pub mod serve;
pub mod transformer;
pub mod weights;
pub mod workload;
