//! Optional stderr progress bar; a no-op when disabled so callers need no branches.

use indicatif::{ProgressBar, ProgressStyle};

pub(crate) struct Progress(Option<ProgressBar>);

impl Progress {
    pub(crate) fn new(enabled: bool, len: u64, message: &str) -> Self {
        if !enabled {
            return Progress(None);
        }
        let bar = ProgressBar::new(len);
        if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({elapsed}, eta {eta})") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(message.to_string());
        Progress(Some(bar))
    }

    pub(crate) fn inc(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish();
        }
    }
}
