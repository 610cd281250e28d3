//! Starting and stopping the real `sluice` binary for end-to-end tests.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `sluice serve` process.
pub struct Sluice {
    child: Option<Child>,
    /// Name server address.
    pub ns: SocketAddr,
    /// Broker address.
    pub broker: SocketAddr,
    /// HTTP facade address (a free port picked at start).
    pub http: SocketAddr,
    /// Data folder.
    pub data: PathBuf,
    /// Time from spawn to the ready line.
    pub cold_start: Duration,
    /// The process's stderr lines (the newest [`STDERR_KEPT`]), when it was started with
    /// [`start_on`]; they are passed on to the test's stderr too.
    stderr: Option<Arc<Mutex<VecDeque<String>>>>,
}

/// Stderr lines of a [`start_on`] process kept for [`Sluice::stderr_shows`].
const STDERR_KEPT: usize = 1000;

/// A port that was free a moment ago (bind to port 0, read it, release it).
pub fn free_port() -> u16 {
    // The kernel may hand the same just-released port to two calls in a row (a test asking
    // for a name-server and a broker port got one port twice, and `sluice` refused to
    // start): no port is handed out twice in this process.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no fresh free port in 1000 tries");
}

/// Starts `sluice serve` on the given ports and waits for its ready line.
pub fn start(data: &Path, ns_port: u16, broker_port: u16) -> Sluice {
    start_with_env(data, ns_port, broker_port, &[])
}

/// As [`start`], with extra environment variables (`SLUICE_*` configuration).
pub fn start_with_env(data: &Path, ns_port: u16, broker_port: u16, env: &[(&str, &str)]) -> Sluice {
    let started = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    without_inherited_config(&mut cmd);
    cmd.args(["serve", "--data-dir"])
        .arg(data)
        .args(["--namesrv-listen", &format!("127.0.0.1:{ns_port}")])
        .args(["--broker-listen", &format!("127.0.0.1:{broker_port}")])
        .args(["--http-listen", "127.0.0.1:0"])
        // 64 MiB segments instead of 1 GiB: tests run many brokers at once on shared disks.
        .env("SLUICE_STORE_SEGMENT_BYTES", "67108864")
        // The disk guard has its own tests; here it must not trip on a crowded build disk.
        .env("SLUICE_STORE_DISK_MAX_USED_RATIO", "0.99")
        .env(
            "SLUICE_LOG",
            std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn sluice");
    let (ns, broker, http) = read_ready_line(&mut child);
    Sluice {
        child: Some(child),
        ns,
        broker,
        http,
        data: data.to_path_buf(),
        cold_start: started.elapsed(),
        stderr: None,
    }
}

impl Sluice {
    /// Whether the process wrote a stderr line containing `needle` (waiting up to `limit`
    /// for its stderr to be read); only for a process started with [`start_on`].
    pub fn stderr_shows(&self, needle: &str, limit: Duration) -> bool {
        let lines = self.stderr.as_ref().expect("started with start_on");
        let deadline = Instant::now() + limit;
        loop {
            if lines.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and checks that it exits 0.
    pub fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let status =
            wait_timeout(&mut child, Duration::from_secs(60)).expect("sluice stops within 60 s");
        assert!(
            status.success(),
            "sluice exit status after SIGTERM: {status}"
        );
    }

    /// SIGKILL: no chance to flush or mark a clean shutdown.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Waits for the process to end by itself (at a crash point, say); `None` if it still
    /// runs after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let status = wait_timeout(self.child.as_mut().expect("running"), limit)?;
        self.child = None;
        Some(status)
    }

    /// Whether the process has ended (it is then still reaped by [`Self::wait_exit`]).
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_some(),
            None => true,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits for a child with a deadline; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// As [`start_with_env`], with the HTTP facade on a given port too, so a restarted process
/// answers on the same three addresses (`http_port` 0 picks a free one). The child sees only
/// the `SLUICE_*` variables given here: the test's own (`SLUICE_CRASH_CYCLES`,
/// `SLUICE_TEST_LOG`…) would be refused by the broker as unknown configuration keys.
pub fn start_on(
    data: &Path,
    ns_port: u16,
    broker_port: u16,
    http_port: u16,
    env: &[(&str, &str)],
) -> Sluice {
    let started = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(["serve", "--data-dir"])
        .arg(data)
        .args(["--namesrv-listen", &format!("127.0.0.1:{ns_port}")])
        .args(["--broker-listen", &format!("127.0.0.1:{broker_port}")])
        .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    without_inherited_config(&mut cmd);
    cmd.env(
        "SLUICE_LOG",
        std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    cmd.env("SLUICE_STORE_SEGMENT_BYTES", "67108864")
        // The disk guard has its own tests; here it must not trip on a crowded build disk.
        .env("SLUICE_STORE_DISK_MAX_USED_RATIO", "0.99");
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("spawn sluice");
    let stderr = keep_stderr(&mut child);
    let (ns, broker, http) = read_ready_line(&mut child);
    Sluice {
        child: Some(child),
        ns,
        broker,
        http,
        data: data.to_path_buf(),
        cold_start: started.elapsed(),
        stderr: Some(stderr),
    }
}

/// Reads the child's stderr on a thread: each line goes on to the test's stderr (as when it
/// was inherited) and the newest [`STDERR_KEPT`] are kept.
fn keep_stderr(child: &mut Child) -> Arc<Mutex<VecDeque<String>>> {
    let kept = Arc::new(Mutex::new(VecDeque::new()));
    let pipe = child.stderr.take().expect("piped stderr");
    let sink = Arc::clone(&kept);
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            eprintln!("{line}");
            let mut k = sink.lock().unwrap();
            if k.len() == STDERR_KEPT {
                k.pop_front();
            }
            k.push_back(line);
        }
    });
    kept
}

/// Waits for the ready line, returns the HTTP address it names, and keeps draining stdout
/// so the child never blocks on a full pipe.
fn read_ready_line(child: &mut Child) -> (SocketAddr, SocketAddr, SocketAddr) {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    assert!(
        ready.starts_with("sluice ready:"),
        "sluice did not start: {ready:?}"
    );
    // "sluice ready: name server A, broker B, http C, data …": the bound addresses, so a
    // caller may ask for port 0 and never race another test for a "free" port.
    let addr = |label: &str| -> SocketAddr {
        ready
            .split(", ")
            .find_map(|part| {
                part.strip_prefix("sluice ready: ")
                    .unwrap_or(part)
                    .strip_prefix(label)
            })
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {label}address in {ready:?}"))
    };
    let found = (addr("name server "), addr("broker "), addr("http "));
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    found
}

/// The test process's own `SLUICE_*` variables (`SLUICE_CRASH_CYCLES`, or a key an operator
/// exported) must not change the process under test.
pub fn without_inherited_config(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SLUICE_") {
            cmd.env_remove(k);
        }
    }
}

/// A child process that is killed (and reaped) when dropped, so a failed assertion leaves no
/// broker running on the machine.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs `cmd` to its end with stdout and stderr captured, failing the test (and killing the
/// process) if it runs past `limit`: a refusal that regressed into a start must not hang
/// the suite.
pub fn output_within(cmd: &mut Command, limit: Duration) -> std::process::Output {
    use std::io::Read;
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut guard = KillOnDrop(child);
    let status = wait_timeout(&mut guard.0, limit)
        .unwrap_or_else(|| panic!("still running after {limit:?}"));
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    if let Some(mut o) = guard.0.stdout.take() {
        let _ = o.read_to_end(&mut stdout);
    }
    if let Some(mut e) = guard.0.stderr.take() {
        let _ = e.read_to_end(&mut stderr);
    }
    std::process::Output {
        status,
        stdout,
        stderr,
    }
}

/// The lines a child writes to stdout, read on a thread so each wait has a deadline.
pub struct LineReader(std::sync::mpsc::Receiver<String>);

impl LineReader {
    pub fn new(stdout: std::process::ChildStdout) -> Self {
        use std::io::BufRead;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self(rx)
    }

    /// The next line, failing the test after `limit`.
    pub fn next_within(&self, limit: Duration) -> String {
        self.0
            .recv_timeout(limit)
            .unwrap_or_else(|e| panic!("no line within {limit:?}: {e}"))
    }

    /// Every line still to come, until the child closes stdout (bounded by `limit`).
    pub fn rest_within(&self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.0.recv_timeout(left) {
                Ok(line) => out.push(line),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return out,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    panic!("stdout still open after {limit:?}")
                }
            }
        }
    }
}
