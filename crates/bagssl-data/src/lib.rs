//! bagssl-data: datasets, the decoded [`ImageStore`], seeded patch sampling and the CPU patch
//! gather + augmentation (docs/DEFINITIONS.md §1-§3).
//!
//! - [`load`] reads CIFAR-10 binary or an ImageFolder of JPEG/PNG (auto-detected), optionally
//!   through an on-disk cache; [`synthetic`] makes a labelled set with no files at all.
//! - [`PatchSampler`] draws the [`PatchSpec`]s of a step: the step's only randomness.
//! - [`gather_patches`] / [`gather_grid`] turn specs / grid positions into normalised HWC patch
//!   vectors: the CPU reference of the GPU patch-embedding kernel.
//! - [`SeededRng`] and [`RngState`] make every random draw resumable from a checkpoint.

mod cache;
mod cifar;
mod error;
mod folder;
mod gather;
mod load;
mod progress;
mod rng;
mod sampler;
mod store;
mod synthetic;

pub use error::DataError;
pub use gather::{blur_radius, gather_grid, gather_patches, grid_len, grid_positions, GRAY_WEIGHTS};
pub use load::{detect_format, load, load_with_report, resize_store, DatasetFormat, LoadOptions, LoadReport, Split};
pub use rand_chacha::{self, ChaCha8Rng};
pub use rng::{RngState, SeededRng};
pub use sampler::{
    check_patch_size, Augment, Jitter, PatchSampler, PatchSpec, Views, FLIP_P, GRAY_P, JITTER_P, JITTER_RANGE,
    PATCH_STREAM, RESIZED_CROP_TRIES,
};
pub use store::{ImageStore, CIFAR10_MEAN, CIFAR10_STD};
pub use synthetic::{synthetic, SyntheticSpec};
