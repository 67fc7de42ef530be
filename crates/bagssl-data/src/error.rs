//! The one error type of the crate. Every variant names the file, folder or value at fault, so a
//! user can act on the message without a debugger.

use std::path::PathBuf;

/// Everything that can go wrong while reading a dataset or validating a data option.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The dataset path (or a file the format requires) does not exist.
    #[error("{}: not found", path.display())]
    NotFound { path: PathBuf },

    /// An I/O error on a specific file or folder.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The path exists but is neither a CIFAR-10 binary directory nor an ImageFolder directory.
    #[error("{}: unrecognised dataset ({reason})", path.display())]
    UnknownFormat { path: PathBuf, reason: String },

    /// A CIFAR-10 batch file whose size is not a whole number of 3073-byte records.
    #[error(
        "{}: {size} bytes is not a multiple of the {record}-byte CIFAR-10 record (truncated or not a CIFAR-10 batch)",
        path.display()
    )]
    Truncated { path: PathBuf, size: u64, record: usize },

    /// A CIFAR-10 record whose label byte has no class.
    #[error("{}: record {record} has label {label}, but there are only {classes} classes", path.display())]
    BadLabel { path: PathBuf, record: usize, label: u32, classes: usize },

    /// A file in a class folder that is not a decodable JPEG/PNG image.
    #[error("{}: not a readable JPEG/PNG image: {message}", path.display())]
    Decode { path: PathBuf, message: String },

    /// A sample of a tar shard that cannot be used (not an image, no image, a bad label).
    #[error("{}: sample {key}: {message}", shard.display())]
    ShardSample { shard: PathBuf, key: String, message: String },

    /// A sample of a tar shard without its `KEY.cls` label.
    #[error("{}: sample {key} has no {key}.cls label (an integer class index)", shard.display())]
    MissingLabel { shard: PathBuf, key: String },

    /// A shard that is not a readable tar archive.
    #[error("{}: not a readable tar shard: {message}", shard.display())]
    Tar { shard: PathBuf, message: String },

    /// A shard pattern or folder that names no shard file.
    #[error("{pattern}: matches no shard file (expected *.tar, or a brace pattern like train-{{000000..000009}}.tar)")]
    NoShards { pattern: String },

    /// A brace pattern that cannot be expanded.
    #[error("bad shard pattern {message}")]
    BadPattern { message: String },

    /// A shard pattern some of whose files are missing.
    #[error("{pattern}: {missing} of its {total} shards are missing, the first {}", shard.display())]
    MissingShard { pattern: String, shard: PathBuf, missing: usize, total: usize },

    /// Shards that hold no sample.
    #[error("{}: no sample with an image in these {shards} shard(s)", first.display())]
    EmptyShards { first: PathBuf, shards: usize },

    /// Two fits asked at once, or a zero image size.
    #[error("invalid image fit: {0}")]
    InvalidFit(String),

    /// A class folder without any image file in it.
    #[error("{}: class folder is empty", path.display())]
    EmptyClass { path: PathBuf },

    /// An ImageFolder root without any class sub-folder.
    #[error("{}: no class folders (expected <root>/<class>/*.jpg|png)", path.display())]
    NoClasses { path: PathBuf },

    /// A `train`/`test` layout that lacks the requested split.
    #[error("{}: split folder missing", path.display())]
    MissingSplit { path: PathBuf },

    /// Images of more than one size and no `resize` option. `sizes` holds (height, width, first
    /// file of that size) in file order.
    #[error("{}", mixed_sizes_message(sizes))]
    MixedSizes { sizes: Vec<(usize, usize, PathBuf)> },

    /// A resize target with a zero side.
    #[error("invalid resize {height}x{width}: both sides must be at least 1")]
    InvalidResize { height: usize, width: usize },

    /// A patch size that does not fit the images (or is zero).
    #[error("patch size {patch} does not fit {height}x{width} images (need 1 <= patch <= min(height, width))")]
    PatchTooLarge { patch: usize, height: usize, width: usize },

    /// A grid stride of zero.
    #[error("grid stride must be at least 1, got {stride}")]
    InvalidStride { stride: usize },

    /// A store whose fields disagree (pixel count vs labels, label vs classes).
    #[error("invalid image store: {0}")]
    InvalidStore(String),
}

fn mixed_sizes_message(sizes: &[(usize, usize, PathBuf)]) -> String {
    const SHOWN: usize = 6;
    let mut msg = String::from("images have different sizes (height x width): ");
    let listed: Vec<String> =
        sizes.iter().take(SHOWN).map(|(h, w, p)| format!("{h}x{w} (first: {})", p.display())).collect();
    msg.push_str(&listed.join(", "));
    if sizes.len() > SHOWN {
        msg.push_str(&format!(", and {} more sizes", sizes.len() - SHOWN));
    }
    msg.push_str("; set a resize (height, width), or an image_size S (shorter side to S, centre crop S x S), to load them all at one size");
    msg
}

impl DataError {
    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::NotFound { path }
        } else {
            DataError::Io { path, source }
        }
    }
}
