//! bagssl-data: datasets, the decoded [`ImageStore`], seeded patch sampling and the CPU patch
//! gather + augmentation (docs/DEFINITIONS.md §1-§3).
//!
//! - [`load`] reads CIFAR-10 binary, an ImageFolder of JPEG/PNG or WebDataset tar shards
//!   (auto-detected), bringing images of any size to one with a [`Fit`]; with a cache folder the
//!   decode streams into a file that every load maps ([`Pixels::Mapped`]), so a dataset larger
//!   than memory trains from the page cache; [`synthetic`] makes a labelled set with no files.
//! - [`PatchSampler`] draws the [`PatchSpec`]s of a step: the step's only randomness.
//! - [`gather_patches`] / [`gather_grid`] turn specs / grid positions into normalised HWC patch
//!   vectors: the CPU reference of the GPU patch-embedding kernel.
//! - [`SeededRng`] and [`RngState`] make every random draw resumable from a checkpoint.

mod cache;
mod cifar;
mod decode;
mod error;
mod folder;
mod gather;
mod load;
mod pixels;
mod progress;
mod rng;
mod sampler;
mod store;
mod synthetic;
mod webdataset;

pub use decode::{center_crop_offset, decode_image_file, short_side_size, Fit};
pub use error::DataError;
pub use gather::{
    blur_radius, compact_specs, copy_images, gather_grid, gather_patches, grid_len, grid_positions, GRAY_WEIGHTS,
};
pub use load::{detect_format, load, load_with_report, resize_store, DatasetFormat, LoadOptions, LoadReport, Split};
pub use pixels::{MappedBytes, Pixels};
pub use rand_chacha::{self, ChaCha8Rng};
pub use rng::{RngState, SeededRng};
pub use sampler::{
    check_patch_size, Augment, Jitter, PatchSampler, PatchSpec, Views, FLIP_P, GRAY_P, JITTER_P, JITTER_RANGE,
    PATCH_STREAM, RESIZED_CROP_TRIES,
};
pub use store::{ImageStore, CIFAR10_MEAN, CIFAR10_STD};
pub use synthetic::{synthetic, SyntheticSpec};
pub use webdataset::expand_braces;
