//! bagssl-eval
