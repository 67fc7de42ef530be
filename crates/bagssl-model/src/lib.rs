//! bagssl-model
