//! File descriptors: the soft limit raised to the hard one at start, and the connection cap
//! fitted under it.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept for everything but client connections: database connections, log files,
/// the listeners, refusals being answered, and some slack.
const RESERVED: u64 = 512;

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force.
pub(super) fn raise_limit() -> Option<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => return Some(hard),
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit"),
        }
    }
    Some(soft)
}

/// The configured cap, lowered when the descriptor limit could not hold it.
pub(super) fn connection_cap(configured: u64, descriptor_limit: Option<u64>, database_connections: usize) -> usize {
    let Some(limit) = descriptor_limit else {
        return configured as usize;
    };
    let room = limit.saturating_sub(RESERVED + database_connections as u64).max(1);
    if room < configured {
        tracing::warn!(
            configured,
            descriptor_limit = limit,
            cap = room,
            "MAX_CONNECTIONS lowered to fit the open-file limit"
        );
    }
    configured.min(room) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_under_the_descriptor_limit() {
        assert_eq!(connection_cap(10_000, Some(1_048_576), 10), 10_000);
        assert_eq!(connection_cap(10_000, Some(1024), 10), 1024 - 512 - 10);
        assert_eq!(connection_cap(10_000, Some(100), 10), 1);
        assert_eq!(connection_cap(50, None, 10), 50);
    }
}
