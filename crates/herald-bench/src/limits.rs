//! The open-files limit: raised as far as allowed at startup, and checked against the run.
//!
//! Every subscriber and publisher connection is a file descriptor. Rather than failing half-way
//! through connecting with `EMFILE`, a run that cannot fit refuses to start and says what to do.

use anyhow::{bail, Context, Result};

/// Descriptors kept free for the runtime, DNS, the JSON file and the like.
pub const SPARE_FDS: u64 = 64;

/// Raises the soft limit on open files to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX).context("cannot raise the open-files limit")
}

/// Fails with advice unless `sockets` connections (plus spares) fit in `limit`.
pub fn check_fits(sockets: u64, limit: u64) -> Result<()> {
    let needed = sockets + SPARE_FDS;
    if needed > limit {
        bail!(
            "this run needs about {needed} open files ({sockets} connections + {SPARE_FDS} spare) \
             but this process may open only {limit} (ulimit -Hn). Run several herald-bench \
             processes with fewer --subscribers each (and --source-ips if ephemeral ports run \
             short)."
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_runs_that_do_not_fit() {
        assert!(check_fits(19_000, 20_000).is_ok());
        let error = check_fits(20_000, 20_000).unwrap_err().to_string();
        assert!(error.contains("several herald-bench processes"), "{error}");
    }

    #[test]
    fn raises_to_something_usable() {
        assert!(raise_nofile().unwrap() >= 256);
    }
}
