//! Implementations of the engine's [`crate::engine::ForwardModel`], each unaware of the others.

pub mod cpu;
pub mod reference;
pub mod webgpu;
