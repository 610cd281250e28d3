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

/// Seconds per USER_HZ tick, the unit of `/proc/<pid>/stat` and `/proc/stat` (100 a second on
/// Linux whatever the kernel's HZ).
const TICK: f64 = 0.01;

/// CPU time (user + system, all threads) of a process (`self` or a pid), in seconds, from
/// `/proc/<pid>/stat`; 0 when it cannot be read.
fn process_cpu(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3 (`state`) on:
    // utime and stime are fields 14 and 15.
    let after = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    let fields: Vec<f64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    (fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0)) * TICK
}

/// The machine's idle time (idle + iowait, all cores) in seconds, from `/proc/stat`.
fn machine_idle() -> f64 {
    let all = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<f64> = all
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    (cpu.get(3).unwrap_or(&0.0) + cpu.get(4).unwrap_or(&0.0)) * TICK
}

/// Where a load phase's time went: CPU per operation (this process, and a server it runs as a
/// child if any) and the share of the machine's cores left idle. A phase that waits (for a
/// sync, say) shows idle cores; one that does more work per operation shows more CPU per
/// operation. Ratios alone cannot tell the two apart.
pub struct CpuUse {
    started: std::time::Instant,
    child: Option<u32>,
    own: f64,
    server: f64,
    idle: f64,
}

impl CpuUse {
    /// Starts counting for this process and, if given, the child `server`.
    pub fn start(server: Option<u32>) -> Self {
        Self {
            started: std::time::Instant::now(),
            child: server,
            own: process_cpu("self"),
            server: server.map_or(0.0, |p| process_cpu(&p.to_string())),
            idle: machine_idle(),
        }
    }

    /// "CPU x us per op ..., y % of the cores idle" for `ops` operations since `start`.
    pub fn line(&self, ops: usize) -> String {
        let wall = self.started.elapsed().as_secs_f64();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let per_op = |secs: f64| secs / ops.max(1) as f64 * 1e6;
        let own = per_op(process_cpu("self") - self.own);
        let idle = (machine_idle() - self.idle) / (wall * cores) * 100.0;
        match self.child {
            None => format!("CPU {own:.0} us per op (this process), {idle:.0} % of the cores idle"),
            Some(pid) => {
                let server = per_op(process_cpu(&pid.to_string()) - self.server);
                format!(
                    "CPU {:.0} us per op (server {server:.0}, bench client {own:.0}), {idle:.0} % of the cores idle",
                    server + own
                )
            }
        }
    }
}
