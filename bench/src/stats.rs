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
