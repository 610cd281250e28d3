//! Medians, ratios and the table the benchmarks print.

/// The median of `v` (mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// One result row: subject and baseline rates (runs), and the goal for their ratio.
pub struct Row {
    pub name: String,
    pub unit: &'static str,
    pub subject: Vec<f64>,
    pub baseline: Vec<f64>,
    pub baseline_name: &'static str,
    pub goal: &'static str,
}

impl Row {
    pub fn ratio(&self) -> f64 {
        median(&self.subject) / median(&self.baseline)
    }
}

/// Prints rows as a markdown table.
pub fn print_table(rows: &[Row]) {
    println!("| benchmark | Sluice (median) | baseline | baseline (median) | ratio | goal |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} {} | {} | {} {} | {:.2}x | {} |",
            r.name,
            fmt(median(&r.subject)),
            r.unit,
            r.baseline_name,
            fmt(median(&r.baseline)),
            r.unit,
            r.ratio(),
            r.goal
        );
    }
}

pub fn fmt(v: f64) -> String {
    if v >= 100_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Cores and load average, so a reader can tell a quiet run from a contended one.
pub fn machine_line() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load1: f64 = load
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    let label = if load1 > 1.5 { "contended" } else { "quiet" };
    format!(
        "machine: {cores} cores, load average {} ({label})",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// This process's CPU time (user + system, all threads) and the machine's idle time
/// (idle + iowait, all cores), in seconds, read from `/proc`: what [`CpuUse`] compares.
fn cpu_times() -> (f64, f64) {
    // Both files count in USER_HZ ticks, 100 a second on Linux whatever the kernel's HZ.
    const TICK: f64 = 0.01;
    let own = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3 (`state`) on:
    // utime and stime are fields 14 and 15.
    let after = own.rfind(')').map_or("", |i| &own[i + 1..]);
    let fields: Vec<f64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    let process = fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0);
    let all = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<f64> = all
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    let idle = cpu.get(3).unwrap_or(&0.0) + cpu.get(4).unwrap_or(&0.0);
    (process * TICK, idle * TICK)
}

/// Where a load phase's time went: this process's CPU per operation and the share of the
/// machine's cores left idle. A phase that waits (for a sync, say) shows idle cores; one that
/// does more work per operation shows more CPU per operation. Ratios alone cannot tell the two
/// apart.
pub struct CpuUse {
    started: std::time::Instant,
    process: f64,
    idle: f64,
}

impl CpuUse {
    pub fn start() -> Self {
        let (process, idle) = cpu_times();
        Self {
            started: std::time::Instant::now(),
            process,
            idle,
        }
    }

    /// "CPU x us per op, y % of the cores idle" for `ops` operations since `start`.
    pub fn line(&self, ops: usize) -> String {
        let (process, idle) = cpu_times();
        let wall = self.started.elapsed().as_secs_f64();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        format!(
            "CPU {:.0} us per op (this process), {:.0} % of the cores idle",
            (process - self.process) / ops.max(1) as f64 * 1e6,
            (idle - self.idle) / (wall * cores) * 100.0
        )
    }
}
