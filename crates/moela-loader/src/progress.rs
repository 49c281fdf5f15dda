//! The loading progress bar: shown on a terminal once loading has taken more than a second.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub(crate) struct LoadProgress {
    enabled: bool,
    started: Instant,
    bar: ProgressBar,
    shown: bool,
}

impl LoadProgress {
    pub(crate) fn new(enabled: bool) -> LoadProgress {
        LoadProgress {
            enabled,
            started: Instant::now(),
            bar: ProgressBar::hidden(),
            shown: false,
        }
    }

    /// `done` of `total` layers loaded.
    pub(crate) fn update(&mut self, done: usize, total: usize) {
        if !self.enabled {
            return;
        }
        if !self.shown && self.started.elapsed() > Duration::from_secs(1) {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.bar.set_style(
                ProgressStyle::with_template("loading {bar:40} {pos}/{len} layers {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            self.shown = true;
        }
        self.bar.set_length(total as u64);
        self.bar.set_position(done as u64);
    }
}

impl Drop for LoadProgress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
