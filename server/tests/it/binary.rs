//! The `sluice` binary as an operator runs it: ready line, clean shutdown on SIGTERM, refusal of
//! a bad configuration.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    output_within, wait_timeout, without_inherited_config, KillOnDrop, LineReader,
};

/// Bound of every wait on the process: a start, a line, a stop.
const LIMIT: Duration = Duration::from_secs(60);

fn sluice() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    without_inherited_config(&mut cmd);
    cmd
}

/// `sluice serve` on free loopback ports over `data`, stdout read line by line (bounded);
/// killed if the test fails before it stops it.
fn serve(data: &std::path::Path) -> (KillOnDrop, LineReader) {
    serve_with(data, &[])
}

/// `sluice serve` with `extra` arguments after `serve`, on free loopback ports over `data`,
/// logging warnings, with 64 MiB segments and the disk guard at 99 % (callers may override).
fn serve_command(data: &std::path::Path, extra: &[&std::ffi::OsStr]) -> Command {
    let mut cmd = sluice();
    cmd.arg("serve")
        .args(extra)
        .args([
            "--namesrv-listen",
            "127.0.0.1:0",
            "--broker-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data)
        .env("SLUICE_LOG", "warn")
        .env("SLUICE_STORE_SEGMENT_BYTES", "67108864")
        .env("SLUICE_STORE_DISK_MAX_USED_RATIO", "0.99");
    cmd
}

/// [`serve`] with `extra` arguments after `serve` (a `--config`, say).
fn serve_with(data: &std::path::Path, extra: &[&std::ffi::OsStr]) -> (KillOnDrop, LineReader) {
    let mut child = serve_command(data, extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = LineReader::new(child.stdout.take().unwrap());
    (KillOnDrop(child), lines)
}

/// Sends SIGTERM and waits (bounded) for the exit.
fn terminate(child: &mut KillOnDrop) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_timeout(&mut child.0, LIMIT)
        .unwrap_or_else(|| panic!("still running {LIMIT:?} after SIGTERM"))
}

#[test]
fn starts_prints_one_ready_line_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (mut child, lines) = serve(dir.path());
    let ready = lines.next_within(LIMIT);
    let cold_start = started.elapsed();
    assert!(
        ready.starts_with("sluice ready: name server 127.0.0.1:"),
        "{ready}"
    );
    assert!(ready.contains("broker 127.0.0.1:"), "{ready}");
    eprintln!("cold start to ready on an empty data folder: {cold_start:?} ({ready})");
    assert!(
        dir.path().join("store/abort").exists(),
        "running store has its abort marker"
    );

    let exit = terminate(&mut child);
    assert!(exit.success(), "exit 0 after SIGTERM, got {exit}");
    let rest = lines.rest_within(LIMIT);
    assert_eq!(rest, vec!["sluice stopped cleanly".to_string()]);
    assert!(
        !dir.path().join("store/abort").exists(),
        "clean shutdown removes the abort marker"
    );
}

/// A second process on a data folder in use is refused, its cause said once (it was printed
/// twice: the error's own text and its source), and its log lines carry no colour codes when
/// stderr is not a terminal (they broke `grep` in files and journald).
#[test]
fn a_second_process_on_a_folder_in_use_says_why_once_in_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let (mut first, lines) = serve(dir.path());
    let ready = lines.next_within(LIMIT);
    assert!(ready.starts_with("sluice ready:"), "{ready}");
    // The same name-server port as the first: the folder is said to be in use, not the port
    // (the start failed on the port, hiding the cause).
    let ns = ready
        .strip_prefix("sluice ready: name server ")
        .and_then(|r| r.split(',').next())
        .unwrap()
        .to_owned();
    let taken = ["--namesrv-listen", &ns, "--broker-listen", "127.0.0.1:0"];
    let out = output_within(
        sluice()
            .arg("serve")
            .args(taken)
            .args(["--http-listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("SLUICE_LOG", "info"),
        LIMIT,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("is locked by another process").count(),
        1,
        "{err}"
    );
    assert!(err.contains(" INFO "), "info lines were logged: {err}");
    assert!(!err.contains('\u{1b}'), "no escape codes: {err}");
    assert!(terminate(&mut first).success());
}

/// A start with the disk already above its guard looked healthy: a ready line and nothing
/// logged until the first send was refused.
#[test]
fn a_start_with_the_disk_above_its_guard_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        serve_command(dir.path(), &[])
            .env("SLUICE_STORE_DISK_MAX_USED_RATIO", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = LineReader::new(child.0.stdout.take().unwrap());
    assert!(lines.next_within(LIMIT).starts_with("sluice ready:"));
    let exit = terminate(&mut child);
    assert!(exit.success(), "{exit}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("disk above its guard"), "{err}");
}

#[test]
fn unknown_config_keys_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sluice.toml");
    std::fs::write(&cfg, "[broker]\nlisten_addr = \"127.0.0.1:1\"\n").unwrap();
    let out = output_within(sluice().args(["serve", "--config"]).arg(&cfg), LIMIT);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen_addr"), "{err}");
}

#[test]
fn sigterm_right_after_the_ready_line_still_stops_cleanly() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, lines) = serve(dir.path());
        assert!(lines.next_within(LIMIT).starts_with("sluice ready:"));
        // No pause: the handler must already be installed when the ready line appears.
        let exit = terminate(&mut child);
        assert!(
            exit.success(),
            "exit 0 after an immediate SIGTERM, got {exit}"
        );
        assert!(
            !dir.path().join("store/abort").exists(),
            "clean shutdown marker written"
        );
    }
}

/// Plain `sluice` (no subcommand) read its defaults only: `SLUICE_CONFIG` counted for
/// `sluice serve` alone, so an operator's file (ACL, TLS, data folder) was silently ignored.
#[test]
fn sluice_without_a_subcommand_reads_the_config_file_named_in_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sluice.toml");
    std::fs::write(&cfg, "[broker]\nlisten_addr = \"127.0.0.1:1\"\n").unwrap();
    let out = output_within(sluice().env("SLUICE_CONFIG", &cfg), LIMIT);
    assert!(!out.status.success(), "started without reading {cfg:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen_addr"), "{err}");
}

/// The file was validated before the flags were applied, so a flag could not correct it.
#[test]
fn a_flag_corrects_the_file_before_it_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sluice.toml");
    // A public HTTP address without tokens is refused, unless the flag moves it to loopback.
    std::fs::write(&cfg, "[http]\nlisten = \"0.0.0.0:18080\"\n").unwrap();
    let (mut child, lines) = serve_with(
        &dir.path().join("data"),
        &["--config".as_ref(), cfg.as_os_str()],
    );
    let ready = lines.next_within(LIMIT);
    assert!(ready.starts_with("sluice ready:"), "{ready:?}");
    assert!(terminate(&mut child).success());
}

/// A stop that could not save the broker's state printed "sluice stopped cleanly" and exited
/// 0, so a supervisor took it for a clean one.
#[test]
fn a_stop_that_could_not_save_the_topics_is_not_reported_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, lines) = serve(dir.path());
    let ready = lines.next_within(LIMIT);
    let http = http_addr(&ready);
    // Saves fail while a folder holds the file's name (the rename over it is refused).
    let file = dir.path().join("store/config/topics.json");
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    std::fs::write(file.join("blocker"), b"x").unwrap();
    let (status, body) = http_request(
        http,
        "POST",
        "/v1/topics",
        r#"{"name":"Unsaved","queues":1}"#,
    );
    assert!(status.contains(" 503 "), "{status} {body}");
    let exit = terminate(&mut child);
    assert_eq!(exit.code(), Some(1), "an unclean stop exits 1, got {exit}");
    let rest = lines.rest_within(LIMIT);
    assert!(
        !rest.iter().any(|l| l.contains("stopped cleanly")),
        "{rest:?}"
    );
}

/// The HTTP address in the ready line.
fn http_addr(ready: &str) -> std::net::SocketAddr {
    ready
        .split(", ")
        .find_map(|p| p.strip_prefix("http "))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no http address in {ready:?}"))
}

/// One plain HTTP/1.1 GET over a fresh connection; returns the status line and the body.
fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    http_request(addr, "GET", path, "")
}

/// One plain HTTP/1.1 request (a JSON body when not empty) over a fresh connection; returns
/// the status line and the body.
fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.lines().next().unwrap_or_default().to_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[test]
fn the_http_facade_serves_on_the_address_in_the_ready_line() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, lines) = serve(dir.path());
    let http = http_addr(&lines.next_within(LIMIT));
    let (status, body) = http_get(http, "/readyz");
    assert!(status.contains(" 200 "), "{status} {body}");
    assert!(body.contains("\"ready\""), "{body}");
    let (status, _) = http_get(http, "/openapi.json");
    assert!(status.contains(" 200 "), "{status}");
    assert!(terminate(&mut child).success());
}

/// Soft and hard "Max open files" of a running process (`/proc/PID/limits`).
fn open_files_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut fields = line["Max open files".len()..].split_whitespace();
    let soft = fields.next().unwrap().to_owned();
    (soft, fields.next().unwrap().to_owned())
}

#[test]
fn raises_its_open_files_soft_limit_to_the_hard_limit() {
    let dir = tempfile::tempdir().unwrap();
    // Started as from a login shell whose soft limit is low; the hard limit is inherited.
    let mut sh = Command::new("sh");
    without_inherited_config(&mut sh);
    let mut child = sh
        .arg("-c")
        .arg(
            "ulimit -Sn 256 2>/dev/null; exec \"$0\" serve --namesrv-listen 127.0.0.1:0 \
             --broker-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --data-dir \"$1\"",
        )
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .arg(dir.path())
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = LineReader::new(child.stdout.take().unwrap());
    let mut child = KillOnDrop(child);
    let ready = lines.next_within(LIMIT);
    assert!(ready.starts_with("sluice ready"), "{ready}");
    let (soft, hard) = open_files_limits(child.0.id());
    let (_, own_hard) = open_files_limits(std::process::id());
    assert!(terminate(&mut child).success());
    assert_eq!(hard, own_hard, "the hard limit is the operator's and stays");
    assert_eq!(
        soft, hard,
        "the soft limit was raised from 256 to the hard limit"
    );
}
