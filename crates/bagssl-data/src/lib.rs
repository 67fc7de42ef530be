//! bagssl-data
