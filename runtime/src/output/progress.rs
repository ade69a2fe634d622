//! Progress while a run trains: indicatif bars, plain lines, or nothing.

use indicatif::{ProgressBar, ProgressStyle};

/// How the run shows progress on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Progress bars (for a terminal).
    Bars,
    /// One plain line per epoch.
    Lines,
    /// Nothing.
    Quiet,
}

/// One epoch's numbers, as shown to the user.
pub struct EpochLine<'a> {
    pub seed: u64,
    pub stage: &'a str,
    pub epoch: usize,
    pub epochs: usize,
    pub train_loss: f64,
    pub val: Option<(f64, f64)>,
    pub seconds: f64,
}

impl EpochLine<'_> {
    fn text(&self) -> String {
        let val = match self.val {
            Some((accuracy, loss)) => {
                format!(", val acc {:.2}%, val loss {loss:.4}", 100.0 * accuracy)
            }
            None => String::new(),
        };
        format!(
            "seed {} stage `{}` epoch {}/{}: loss {:.4}{val} ({:.1}s)",
            self.seed, self.stage, self.epoch, self.epochs, self.train_loss, self.seconds
        )
    }
}

/// The progress display of one stage.
pub struct StageProgress {
    mode: Progress,
    bar: Option<ProgressBar>,
}

impl StageProgress {
    pub fn start(mode: Progress, stage: &str, seed: u64, total_steps: usize) -> Self {
        let bar = (mode == Progress::Bars).then(|| {
            let bar = ProgressBar::new(total_steps as u64);
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} steps {elapsed_precise} eta {eta} {msg}",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(format!("seed {seed} `{stage}`"));
            bar
        });
        StageProgress { mode, bar }
    }

    /// Counts steps a resumed run does not repeat.
    pub fn skip(&self, steps: usize) {
        if let Some(bar) = &self.bar {
            bar.inc(steps as u64);
            bar.reset_eta();
        }
    }

    pub fn step(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    pub fn epoch(&self, line: &EpochLine) {
        match (&self.bar, self.mode) {
            (Some(bar), _) => bar.set_message(format!(
                "epoch {}/{} loss {:.4}",
                line.epoch, line.epochs, line.train_loss
            )),
            (None, Progress::Lines) => eprintln!("{}", line.text()),
            _ => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
