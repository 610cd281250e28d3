//! The `sluice` config loader: a TOML file layered with `SLUICE_*` variables, then validated.
//!
//! `sluice-server` is a binary-only crate, so its `config` module is compiled into this target
//! from its source file (nothing is copied): `load` below is the binary's own function.
//!
//! Input: the text up to the first NUL byte is the config file; each later NUL-separated
//! `NAME=value` is an environment variable. Oracle: `load` answers `Ok` or `Err`, never panics,
//! and a config it accepts converts into every subsystem's settings.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unused_imports, missing_docs)]
#[path = "../../server/src"]
mod server {
    pub mod config;
}

/// At most this many variables per input: every loop is bounded.
const MAX_VARS: usize = 32;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0);
    let file_text = parts.next().unwrap_or_default();
    let env: Vec<(String, String)> = parts
        .take(MAX_VARS)
        .filter_map(|p| {
            let text = std::str::from_utf8(p).ok()?;
            let (k, v) = text.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect();
    let mut file = tempfile::NamedTempFile::new_in(sluice_fuzz::scratch_root()).expect("temp file");
    file.write_all(file_text).expect("write config");
    let Ok(cfg) = server::config::load(Some(file.path()), env.into_iter()) else {
        return;
    };
    let _ = cfg.store_config();
    let _ = cfg.namesrv_config();
    let _ = cfg.broker_config(None);
    cfg.txn_config()
        .expect("a validated config has a valid [txn] section");
});
