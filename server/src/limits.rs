//! Process limits the broker needs more of than a login shell gives.
//!
//! Every consume-queue and index file stays open (and mapped) while it holds data, and every
//! connection is a descriptor. The usual soft limit on open files is 1 024, well below the
//! default `max_connections` (10 000) and below what a broker with a few hundred queues holds:
//! the 1 025th descriptor would fail an accept or, worse, a queue file's creation. So at start
//! the soft limit is raised to the hard one, as Go's runtime and most servers do; the hard
//! limit itself is the operator's (systemd `LimitNOFILE=`, `ulimit -Hn`).

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors the broker uses besides connections: a generous allowance for queue, index and
/// commit-log files, listeners and the runtime, for the warning below.
const FILE_ALLOWANCE: u64 = 4_096;

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

/// Logs the limit, and warns when it cannot cover `max_connections` (the broker's and the
/// HTTP facade's together) plus the store's files.
pub fn report(limits: OpenFiles, max_connections: u64) {
    let show = |v: Option<u64>| v.map_or("unlimited".to_owned(), |n| n.to_string());
    if limits.soft != limits.soft_before {
        tracing::info!(
            before = %show(limits.soft_before), now = %show(limits.soft),
            "open-files limit raised to the hard limit"
        );
    }
    if let Some(soft) = limits.soft {
        let needed = max_connections.saturating_add(FILE_ALLOWANCE);
        if soft < needed {
            tracing::warn!(
                limit = soft, max_connections, needed,
                "the open-files limit is below max_connections plus the store's files: raise it (ulimit -Hn, systemd LimitNOFILE=) or lower max_connections"
            );
        }
    }
}
