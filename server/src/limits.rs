//! Process limits the broker needs more of than a login shell gives.
//!
//! Every consume-queue and index file stays open (and mapped) while it holds data, and every
//! connection is a descriptor. The usual soft limit on open files is 1 024, well below the
//! default `max_connections` (10 000) and below what a broker with a few hundred queues holds:
//! the 1 025th descriptor would fail an accept or, worse, a queue file's creation. So at start
//! the soft limit is raised to the hard one, as Go's runtime and most servers do; the hard
//! limit itself is the operator's (systemd `LimitNOFILE=`, `ulimit -Hn`).

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Below this soft limit a warning is logged: a few hundred queues and connections exhaust it.
const LOW_LIMIT: u64 = 8_192;

/// The open-files limits before and after [`raise_open_files`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub soft_before: Option<u64>,
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// Raises the soft open-files limit to the hard limit; `None` stands for unlimited.
pub fn raise_open_files() -> OpenFiles {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let mut out = OpenFiles {
        soft_before: current,
        soft: current,
        hard: maximum,
    };
    if current == maximum {
        return out;
    }
    let wanted = Rlimit {
        current: maximum,
        maximum,
    };
    match setrlimit(Resource::Nofile, wanted) {
        Ok(()) => out.soft = maximum,
        Err(e) => {
            tracing::warn!(error = %e, soft = ?current, hard = ?maximum, "cannot raise the open-files limit")
        }
    }
    out
}

/// Logs the limit, and warns when it is low enough to be met in ordinary use.
pub fn report(limits: OpenFiles) {
    let show = |v: Option<u64>| v.map_or("unlimited".to_owned(), |n| n.to_string());
    tracing::info!(
        soft = %show(limits.soft), before = %show(limits.soft_before), hard = %show(limits.hard),
        "open-files limit (each connection and each queue or index file holding data is one)"
    );
    if limits.soft.is_some_and(|soft| soft < LOW_LIMIT) {
        tracing::warn!(
            limit = %show(limits.soft),
            "the open-files limit is low for a broker: raise the hard limit (ulimit -Hn, systemd LimitNOFILE=)"
        );
    }
}
