//! The loader's tests: layering, defaults and the refusals of `validate`.

use super::*;

fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<Vec<_>>()
        .into_iter()
}

/// Why `load` refuses these variables (the whole error chain).
fn refusal(vars: &[(&str, &str)]) -> String {
    format!("{:#}", load(None, env(vars)).unwrap_err())
}

#[test]
fn defaults_are_valid_and_sync() {
    let cfg = load(None, env(&[])).unwrap();
    assert_eq!(cfg.store.flush, "sync");
    assert_eq!(cfg.broker.listen.port(), 10911);
    assert_eq!(cfg.namesrv.listen.port(), 9876);
    assert_eq!(cfg.data_dir, PathBuf::from("./sluice-data"));
}

/// The size budget never takes a segment the schedule or the transaction checker may
/// still need, and never waits longer than the age limit.
#[test]
fn the_size_budget_spares_what_timers_and_open_halves_need() {
    let hours = |h: u64| Duration::from_secs(h * 3600);
    let with = |retention: &str, schedule: &str| {
        load(
            None,
            env(&[
                ("SLUICE_STORE_RETENTION_HOURS", retention),
                ("SLUICE_STORE_RETENTION_BYTES", "2147483648"),
                ("SLUICE_SCHEDULE_ENABLED", schedule),
            ]),
        )
        .unwrap()
        .store_config()
    };
    let s = with("72", "true");
    assert_eq!(s.retention_bytes, Some(2 << 30));
    assert_eq!(s.retention_bytes_min_age, hours(48));
    assert_eq!(with("200", "true").retention_bytes_min_age, hours(101));
    assert_eq!(with("72", "false").retention_bytes_min_age, hours(37));
    assert_eq!(with("1", "false").retention_bytes_min_age, hours(1));
    // Neither transactions nor the schedule: nothing of the broker's own to keep.
    let plain = load(
        None,
        env(&[
            ("SLUICE_STORE_RETENTION_BYTES", "2147483648"),
            ("SLUICE_SCHEDULE_ENABLED", "false"),
            ("SLUICE_TXN_ENABLED", "false"),
        ]),
    )
    .unwrap()
    .store_config();
    assert_eq!(plain.retention_bytes_min_age, Duration::ZERO);
    // A later carry-forward keeps younger segments off the budget for longer.
    let late_carry = load(
        None,
        env(&[
            ("SLUICE_STORE_RETENTION_HOURS", "200"),
            (
                "SLUICE_TXN_CARRY_FORWARD_AFTER_SECS",
                &(150 * 3600).to_string(),
            ),
        ]),
    )
    .unwrap()
    .store_config();
    assert_eq!(late_carry.retention_bytes_min_age, hours(151));
}

#[test]
fn unknown_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "[broker]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap();
    let err = format!("{:#}", load(Some(&p), env(&[])).unwrap_err());
    assert!(err.contains("listen_port"), "{err}");
    let err = refusal(&[("SLUICE_BROKER_NO_SUCH", "1")]);
    assert!(err.contains("no_such"), "{err}");
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "data_dir = \"/a\"\n[store]\nflush = \"async\"\n").unwrap();
    let cfg = load(
        Some(&p),
        env(&[
            ("SLUICE_DATA_DIR", "/b"),
            ("SLUICE_STORE_FLUSH", "sync"),
            ("SLUICE_BROKER_DEFAULT_TOPIC_QUEUE_NUMS", "4"),
            ("SLUICE_LOG", "debug"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.data_dir, PathBuf::from("/b"));
    assert_eq!(cfg.store.flush, "sync");
    assert_eq!(cfg.broker.default_topic_queue_nums, 4);
}

#[test]
fn the_txn_section_has_defaults_group_overrides_and_env() {
    let cfg = load(None, env(&[])).unwrap();
    let t = cfg.txn_config().unwrap();
    assert_eq!(t.defaults.check_after, Duration::from_secs(6));
    assert_eq!(t.defaults.check_max, 15);
    assert!(cfg.txn.enabled);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(
        &p,
        "[txn]\nfinal_action = \"keep\"\n[txn.groups.pay]\ncheck_max = 3\npull_checks = true\n",
    )
    .unwrap();
    let cfg = load(Some(&p), env(&[("SLUICE_TXN_CHECK_AFTER_MS", "300")])).unwrap();
    let t = cfg.txn_config().unwrap();
    assert_eq!(t.defaults.check_after, Duration::from_millis(300));
    let pay = t.policy("pay");
    assert_eq!((pay.check_max, pay.pull_checks), (3, true));
    assert_eq!(pay.final_action, FinalAction::Keep);
    std::fs::write(&p, "[txn.groups.pay]\nchek_max = 3\n").unwrap();
    let err = format!("{:#}", load(Some(&p), env(&[])).unwrap_err());
    assert!(err.contains("chek_max"), "{err}");
    let err = refusal(&[("SLUICE_TXN_FINAL_ACTION", "drop")]);
    assert!(err.contains("final_action"), "{err}");
    let err = refusal(&[("SLUICE_TXN_CHECK_MAX", "0")]);
    assert!(err.contains("check_max"), "{err}");
}

#[test]
fn the_retry_section_has_defaults_group_overrides_and_env() {
    let cfg = load(None, env(&[])).unwrap();
    let r = cfg.broker_config(None).retry;
    assert_eq!(r.defaults.max_reconsume_times, 16);
    assert_eq!(r.defaults.backoff, sluice_broker::Backoff::default());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(
        &p,
        "[retry.groups.fast]\nbackoff = \"ladder\"\nladder_ms = [10, 20]\nmax_reconsume_times = 2\n",
    )
    .unwrap();
    let cfg = load(Some(&p), env(&[("SLUICE_RETRY_MAX_RECONSUME_TIMES", "3")])).unwrap();
    let r = cfg.broker_config(None).retry;
    assert_eq!(r.defaults.max_reconsume_times, 3);
    let fast = r.policy("fast");
    assert_eq!(fast.max_reconsume_times, 2);
    assert_eq!(
        fast.backoff,
        sluice_broker::Backoff::Ladder(vec![Duration::from_millis(10), Duration::from_millis(20)])
    );
    std::fs::write(&p, "[retry.groups.g]\nmax_retries = 3\n").unwrap();
    let err = format!("{:#}", load(Some(&p), env(&[])).unwrap_err());
    assert!(err.contains("max_retries"), "{err}");
    // A field of another back-off kind than the group's was accepted and ignored.
    std::fs::write(&p, "[retry.groups.fast]\nladder_ms = [10, 20]\n").unwrap();
    let err = format!("{:#}", load(Some(&p), env(&[])).unwrap_err());
    assert!(
        err.contains("retry.groups.fast: ladder_ms is for backoff = \"ladder\""),
        "{err}"
    );
    let err = refusal(&[("SLUICE_RETRY_BACKOFF", "linear")]);
    assert!(err.contains("backoff"), "{err}");
    let err = refusal(&[("SLUICE_RETRY_BACKOFF", "ladder")]);
    assert!(err.contains("ladder"), "{err}");
}

#[test]
fn bad_values_are_refused_with_a_reason() {
    let err = refusal(&[("SLUICE_STORE_FLUSH", "sometimes")]);
    assert!(err.contains("store.flush"), "{err}");
    let err = refusal(&[
        ("SLUICE_STORE_ASYNC_FLUSH_INTERVAL_MS", "60000"),
        ("SLUICE_STORE_FLUSH", "async"),
    ]);
    assert!(err.contains("interval"), "{err}");
    let err = refusal(&[("SLUICE_BROKER_IDLE_TIMEOUT_MS", "0")]);
    assert!(err.contains("idle_timeout_ms"), "{err}");
    let err = refusal(&[("SLUICE_TLS_MODE", "sometimes")]);
    assert!(err.contains("[tls] mode"), "{err}");
    let err = refusal(&[("SLUICE_TLS_HTTP", "true")]);
    assert!(err.contains("cert_file and key_file"), "{err}");
}

#[test]
fn connection_idle_time_and_offset_saves_are_configurable() {
    let b = load(None, env(&[])).unwrap().broker_config(None);
    assert_eq!(b.idle_timeout, Duration::from_secs(120));
    assert_eq!(b.offset_flush_interval, Duration::from_secs(5));
    let cfg = load(
        None,
        env(&[
            ("SLUICE_BROKER_IDLE_TIMEOUT_MS", "90000"),
            ("SLUICE_BROKER_OFFSET_FLUSH_INTERVAL_MS", "1000"),
        ]),
    )
    .unwrap();
    let b = cfg.broker_config(None);
    assert_eq!(b.idle_timeout, Duration::from_secs(90));
    assert_eq!(b.drain_timeout, Duration::from_secs(10));
    let cfg = load(
        None,
        env(&[
            ("SLUICE_BROKER_DRAIN_TIMEOUT_MS", "2500"),
            ("SLUICE_HTTP_SHUTDOWN_GRACE_MS", "750"),
        ]),
    )
    .unwrap();
    assert_eq!(
        cfg.broker_config(None).drain_timeout,
        Duration::from_millis(2500)
    );
    assert_eq!(
        cfg.http.to_config().unwrap().shutdown_grace,
        Duration::from_millis(750)
    );
    assert_eq!(b.offset_flush_interval, Duration::from_secs(1));
}

/// Accepted before: retention 0 deleted every dispatched segment (consumed or not) and
/// made the transaction checker copy open halves forward on every tick; a carry-forward of
/// 0 did the latter; a group checked over HTTP with the facade off was never checked.
#[test]
fn settings_that_would_delete_everything_or_strand_checks_are_refused() {
    for (k, v, names) in [
        ("SLUICE_STORE_RETENTION_HOURS", "0", "retention_hours"),
        ("SLUICE_STORE_RETENTION_HOURS", "876001", "retention_hours"),
        ("SLUICE_STORE_RETENTION_HOURS", "47", "schedule"),
        (
            "SLUICE_TXN_CARRY_FORWARD_AFTER_SECS",
            "0",
            "carry_forward_after_secs",
        ),
        (
            // Past the default 72 h retention: open halves would be deleted first.
            "SLUICE_TXN_CARRY_FORWARD_AFTER_SECS",
            "300000",
            "carry_forward_after_secs",
        ),
        ("SLUICE_STORE_SEGMENT_BYTES", "1048576", "segment_bytes"),
        (
            "SLUICE_NAMESRV_BROKER_EXPIRY_SECS",
            "20",
            "broker_expiry_secs",
        ),
    ] {
        let err = load(None, env(&[(k, v)])).expect_err(k).to_string();
        assert!(err.contains(names), "{k}={v}: {err}");
    }
    // Without the schedule, short retention deletes nothing it still needs.
    let cfg = load(
        None,
        env(&[
            ("SLUICE_STORE_RETENTION_HOURS", "1"),
            ("SLUICE_SCHEDULE_ENABLED", "false"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.store.retention_hours, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(
        &path,
        "[http]\nenabled = false\n[txn.groups.g]\ncheck_url = \"http://127.0.0.1:9/c\"\n",
    )
    .unwrap();
    let err = load(Some(&path), env(&[]))
        .expect_err("stranded")
        .to_string();
    assert!(err.contains("txn.groups.g"), "{err}");
}

/// Webhook check-backs went out unsigned when no key was set, although they are promised
/// HMAC-signed: a service could not tell the broker's calls from anyone else's.
#[test]
fn webhook_check_backs_need_a_signing_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    for (toml, names) in [
        (
            "[txn.groups.g]\ncheck_url = \"http://127.0.0.1:9/c\"\n",
            "txn.groups.g.check_url",
        ),
        (
            "[http]\ncheck_url_hosts = [\"127.0.0.1\"]\n",
            "check_url_hosts",
        ),
    ] {
        std::fs::write(&path, toml).unwrap();
        let err = load(Some(&path), env(&[])).expect_err(toml).to_string();
        assert!(
            err.contains(names) && err.contains("webhook_secret"),
            "{err}"
        );
        let key = "webhook_secret = \"0123456789abcdef\"\n";
        let with_key = if toml.starts_with("[http]") {
            toml.replace("[http]\n", &format!("[http]\n{key}"))
        } else {
            format!("[http]\n{key}{toml}")
        };
        std::fs::write(&path, with_key).unwrap();
        load(Some(&path), env(&[])).expect("accepted with a key");
    }
}

/// `SLUICE_NAMESRV` and `SLUICE_HTTP` (the examples' addresses of a running Sluice) and
/// test variables were taken as keys, so `sluice` refused to start in a shell that had
/// them set; a malformed secret-bearing variable was printed whole in the error.
#[test]
fn variables_that_are_not_keys_are_ignored_and_errors_do_not_echo_values() {
    let cfg = load(
        None,
        env(&[
            ("SLUICE_NAMESRV", "127.0.0.1:9876"),
            ("SLUICE_HTTP", "http://127.0.0.1:8080"),
            ("SLUICE_CRASH_CYCLES", "100"),
        ]),
    )
    .expect("not configuration variables");
    assert!(cfg.namesrv.enabled);
    let err = load(
        None,
        env(&[(
            "SLUICE_ACL_ACCOUNTS",
            r#"[{access_key = "ak", secret_key = "topsecret-123"}"#,
        )]),
    )
    .expect_err("malformed")
    .to_string();
    assert!(!err.contains("topsecret-123"), "{err}");
    assert!(err.contains("acl"), "the error still names the key: {err}");
    let typo = load(None, env(&[("SLUICE_BROKER_LISTN", "127.0.0.1:1")]));
    assert!(typo.is_err(), "a typo inside a section is still refused");
}

#[test]
fn parked_pulls_per_connection_are_configurable() {
    let b = load(None, env(&[])).unwrap().broker_config(None);
    assert_eq!(b.max_parked_pulls_per_connection, 4096);
    let cfg = load(
        None,
        env(&[("SLUICE_BROKER_MAX_PARKED_PULLS_PER_CONNECTION", "16")]),
    )
    .unwrap();
    assert_eq!(cfg.broker_config(None).max_parked_pulls_per_connection, 16);
    assert_eq!(b.max_parked_pulls, 100_000);
    let cfg = load(None, env(&[("SLUICE_BROKER_MAX_PARKED_PULLS", "500")])).unwrap();
    assert_eq!(cfg.broker_config(None).max_parked_pulls, 500);
}

#[test]
fn kept_replay_tasks_are_configurable_and_zero_is_refused() {
    let b = load(None, env(&[])).unwrap().broker_config(None);
    assert_eq!(b.replays_kept, 1_000);
    let cfg = load(None, env(&[("SLUICE_BROKER_REPLAYS_KEPT", "5")])).unwrap();
    assert_eq!(cfg.broker_config(None).replays_kept, 5);
    assert!(load(None, env(&[("SLUICE_BROKER_REPLAYS_KEPT", "0")])).is_err());
}

#[test]
fn the_topic_limit_is_configurable_and_zero_is_refused() {
    let b = load(None, env(&[])).unwrap().broker_config(None);
    assert_eq!(b.max_topics, 10_000);
    let cfg = load(None, env(&[("SLUICE_BROKER_MAX_TOPICS", "50")])).unwrap();
    assert_eq!(cfg.broker_config(None).max_topics, 50);
    assert!(load(None, env(&[("SLUICE_BROKER_MAX_TOPICS", "0")])).is_err());
}

#[test]
fn the_name_server_accepts_registration_bodies_up_to_the_frame_size() {
    let cfg = load(None, env(&[])).unwrap();
    let n = cfg.namesrv_config();
    assert_eq!(n.max_body, n.max_frame);
    // A registration body bigger than the broker's own body cap decodes whole.
    let body_len = cfg.broker_config(None).max_body + (1 << 20);
    let register = sluice_protocol::RemotingCommand::request(
        sluice_protocol::request_code::REGISTER_BROKER,
        Default::default(),
    )
    .with_body(vec![b'x'; body_len]);
    let mut wire = bytes::BytesMut::new();
    register.encode(&mut wire).unwrap();
    let decoder = sluice_protocol::FrameDecoder::new(n.max_frame, n.max_body);
    let decoded = decoder.decode(&mut wire).unwrap().unwrap();
    assert_eq!(decoded.body.len(), body_len);
    let cfg = load(
        None,
        env(&[
            ("SLUICE_BROKER_MAX_FRAME_BYTES", "33554432"),
            ("SLUICE_BROKER_MAX_BODY_BYTES", "1048576"),
            ("SLUICE_HTTP_MAX_MESSAGE_BYTES", "1048576"),
        ]),
    )
    .unwrap();
    let n = cfg.namesrv_config();
    assert_eq!((n.max_frame, n.max_body), (33_554_432, 33_554_432));
}

#[test]
fn the_crash_point_variable_is_not_a_config_key() {
    let cfg = load(None, env(&[("SLUICE_CRASH_POINT", "commitlog.sealed")]));
    assert!(cfg.is_ok(), "{:?}", cfg.err());
}

/// A number or boolean where a string key is expected was refused, and the error quoted it:
/// a digit-only secret could not be set from the environment and was printed at start.
#[test]
fn a_digit_only_string_from_the_environment_is_taken_as_a_string() {
    let cfg = load(
        None,
        env(&[("SLUICE_HTTP_WEBHOOK_SECRET", "1234567890123456")]),
    )
    .unwrap();
    assert_eq!(cfg.http.webhook_secret.as_deref(), Some("1234567890123456"));
    // Still refused where a boolean is needed, without the value in the message.
    let err = refusal(&[("SLUICE_TXN_ENABLED", "987654321")]);
    assert!(err.contains("txn.enabled"), "{err}");
    assert!(!err.contains("987654321"), "{err}");
}

/// A variable whose value parsed as an array or table but was wrong inside (an unknown field,
/// a bad address) was taken again as a string, and the error then said "expected a
/// sequence"; nor did any error name the variable.
#[test]
fn an_environment_variable_s_real_mistake_is_reported_with_its_name() {
    let err = refusal(&[(
        "SLUICE_HTTP_TOKENS",
        r#"[{name = "x", secret = "0123456789abcdefXX", scopes = ["admin"], extra = 1}]"#,
    )]);
    assert!(err.contains("unknown field"), "{err}");
    assert!(err.contains("SLUICE_HTTP_TOKENS"), "{err}");
    assert!(!err.contains("0123456789abcdefXX"), "{err}");
    let err = refusal(&[("SLUICE_BROKER_NAMESRV_ADDRS", r#"["127.0.0.1:99999"]"#)]);
    assert!(!err.contains("expected a sequence"), "{err}");
    assert!(err.contains("SLUICE_BROKER_NAMESRV_ADDRS"), "{err}");
    // A number where a path is expected is still taken as the path it spells.
    let cfg = load(None, env(&[("SLUICE_DATA_DIR", "2024")])).unwrap();
    assert_eq!(cfg.data_dir, PathBuf::from("2024"));
}

/// A syntax error printed the offending line whole, a secret included.
#[test]
fn a_syntax_error_names_its_place_but_not_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sluice.toml");
    std::fs::write(&p, "[http]\nwebhook_secret = \"s3cr3t-value-here\n").unwrap();
    let err = format!("{:#}", load(Some(&p), env(&[])).unwrap_err());
    assert!(err.contains("line 2"), "{err}");
    assert!(!err.contains("s3cr3t"), "{err}");
}

#[test]
fn limits_that_contradict_each_other_are_refused() {
    for (vars, names) in [
        (
            vec![("SLUICE_BROKER_IDLE_TIMEOUT_MS", "10000")],
            "idle_timeout_ms",
        ),
        (
            vec![
                ("SLUICE_BROKER_MAX_BODY_BYTES", "1048576"),
                ("SLUICE_STORE_SEGMENT_BYTES", "67108864"),
            ],
            "http.max_message_bytes",
        ),
        (
            vec![("SLUICE_STORE_RETENTION_BYTES", "1048576")],
            "retention_bytes",
        ),
        (
            vec![("SLUICE_BROKER_MAX_INFLIGHT_BYTES", "1048576")],
            "max_inflight_bytes 1048576",
        ),
        (
            vec![("SLUICE_BROKER_MAX_FRAME_BYTES", "134217728")],
            "[namesrv] invalid config: max_inflight_bytes",
        ),
        (
            vec![
                ("SLUICE_BROKER_LISTEN", "0.0.0.0:18080"),
                ("SLUICE_HTTP_LISTEN", "127.0.0.1:18080"),
            ],
            "same port",
        ),
    ] {
        let err = refusal(&vars);
        assert!(err.contains(names), "{vars:?}: {err}");
    }
    // 0.0.0.0 covers IPv4 addresses only; [::] covers every address (dual-stack).
    load(
        None,
        env(&[
            ("SLUICE_BROKER_LISTEN", "0.0.0.0:18080"),
            ("SLUICE_HTTP_LISTEN", "[::1]:18080"),
        ]),
    )
    .unwrap();
    let err = refusal(&[
        ("SLUICE_BROKER_LISTEN", "[::]:18080"),
        ("SLUICE_HTTP_LISTEN", "127.0.0.1:18080"),
    ]);
    assert!(err.contains("same port"), "{err}");
    // Port 0 twice is two free ports, and an HTTP limit below the broker's is fine.
    load(
        None,
        env(&[
            ("SLUICE_BROKER_LISTEN", "127.0.0.1:0"),
            ("SLUICE_NAMESRV_LISTEN", "127.0.0.1:0"),
            ("SLUICE_HTTP_LISTEN", "127.0.0.1:0"),
            ("SLUICE_HTTP_MAX_MESSAGE_BYTES", "1024"),
        ]),
    )
    .unwrap();
}

#[test]
fn a_check_url_is_logged_without_its_credentials() {
    let cfg = load(
        None,
        env(&[
            ("SLUICE_HTTP_WEBHOOK_SECRET", "0123456789abcdef0123"),
            (
                "SLUICE_TXN_GROUPS",
                "{ g = { check_url = \"https://bob:pw@example.com/check?token=t0k#x\" } }",
            ),
        ]),
    )
    .unwrap();
    let logged = serde_json::to_string(&cfg).unwrap();
    assert!(logged.contains(r#""https://example.com/...""#), "{logged}");
    assert!(
        !logged.contains("pw") && !logged.contains("t0k"),
        "{logged}"
    );
}

/// Decreasing levels were accepted by the schedule and then refused as an "[http] leases"
/// error, with HTTP off too; zero connections passed until the broker started (after the
/// data folder and the name server).
#[test]
fn schedule_levels_and_broker_limits_are_refused_where_they_are_set() {
    let err = refusal(&[("SLUICE_SCHEDULE_LEVELS_MS", "[5000, 1000]")]);
    assert!(
        err.contains("schedule:") && err.contains("levels must not decrease"),
        "{err}"
    );
    let err = refusal(&[("SLUICE_BROKER_MAX_CONNECTIONS", "0")]);
    assert!(
        err.contains("[broker]") && err.contains("max_connections"),
        "{err}"
    );
}

#[test]
fn groups_per_connection_are_configurable_and_must_be_positive() {
    let b = load(None, env(&[])).unwrap().broker_config(None);
    assert_eq!(b.max_groups_per_connection, 1024);
    let cfg = load(
        None,
        env(&[("SLUICE_BROKER_MAX_GROUPS_PER_CONNECTION", "8")]),
    )
    .unwrap();
    assert_eq!(cfg.broker_config(None).max_groups_per_connection, 8);
    let mut zero = cfg.broker_config(None);
    zero.max_groups_per_connection = 0;
    assert!(zero
        .validate()
        .unwrap_err()
        .to_string()
        .contains("max_groups_per_connection"));
}

/// Refusals the libraries worded in their own names (`segment_size`, `async flush interval`,
/// `check_interval must be at least 10ms`, a level of `0ns`, `ca_file` for a missing
/// `cert_file`) name the file's key, in its unit; an unknown key set by the environment names
/// its variable.
#[test]
fn refusals_name_the_files_keys_in_their_units() {
    let cases: [(&[(&str, &str)], &str); 9] = [
        (
            &[("SLUICE_STORE_SEGMENT_BYTES", "100000000000000")],
            "store.segment_bytes",
        ),
        (
            &[
                ("SLUICE_STORE_FLUSH", "async"),
                ("SLUICE_STORE_ASYNC_FLUSH_INTERVAL_MS", "0"),
            ],
            "store.async_flush_interval_ms",
        ),
        (
            &[("SLUICE_TXN_CHECK_INTERVAL_MS", "0")],
            "txn.check_interval_ms",
        ),
        (
            &[("SLUICE_TXN_CHECKPOINT_INTERVAL_MS", "0")],
            "txn.checkpoint_interval_ms",
        ),
        (&[("SLUICE_TXN_MAX_AGE_HOURS", "0")], "txn.max_age_hours"),
        (
            &[("SLUICE_SCHEDULE_LEVELS_MS", "[0, 1000]")],
            "schedule.levels_ms[0] is 0",
        ),
        (
            &[("SLUICE_BROKER_MAX_BODY_BYTES", "0")],
            "broker.max_body_bytes must be positive",
        ),
        (
            &[
                ("SLUICE_TLS_MODE", "enforcing"),
                ("SLUICE_TLS_CERT_FILE", "/nope.pem"),
                ("SLUICE_TLS_KEY_FILE", "/nope.key"),
            ],
            "[tls] cert_file",
        ),
        (
            &[("SLUICE_STORE_SEGMNT_BYTES", "5")],
            "SLUICE_STORE_SEGMNT_BYTES",
        ),
    ];
    for (vars, want) in cases {
        let err = refusal(vars);
        assert!(err.contains(want), "{vars:?}: {err}");
    }
}
