//! A shared, timestamped log of what happened, so the demo reads as a story and the test can
//! inspect it afterwards.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Events with their offset from the start of the run. Cloning shares the same log.
#[derive(Clone)]
pub struct Timeline {
    start: Instant,
    lines: Arc<Mutex<Vec<String>>>,
    echo: bool,
}

impl Timeline {
    /// A timeline starting now; with `echo`, each event is also printed as it happens (the
    /// binary wants a live view, the test only the record).
    pub fn new(echo: bool) -> Self {
        Self {
            start: Instant::now(),
            lines: Arc::default(),
            echo,
        }
    }

    /// Records `event` as `t+1.234s event`.
    pub fn log(&self, event: impl AsRef<str>) {
        let line = format!(
            "t+{:.3}s {}",
            self.start.elapsed().as_secs_f64(),
            event.as_ref()
        );
        if self.echo {
            println!("{line}");
        }
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }

    /// Every event so far, in order.
    pub fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
