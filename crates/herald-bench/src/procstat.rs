//! Sampling a process's CPU time and resident memory from `/proc` (Linux).
//!
//! Used on the server (`--server-pid`) to turn a run into cost figures — CPU per delivered
//! message, memory per idle connection — and on the generator itself, to show whether the
//! generator rather than the server was the bottleneck. CPU times in `/proc/PID/stat` are in
//! clock ticks of `USER_HZ`, which Linux fixes at 100 for user space on every architecture it
//! supports.

use std::fs;
use std::io;

/// Clock ticks per second in `/proc/PID/stat`.
const USER_HZ: f64 = 100.0;

/// A process to sample: a pid, or the generator itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proc {
    /// Another process.
    Pid(u32),
    /// This process.
    Myself,
}

impl Proc {
    fn path(self, file: &str) -> String {
        match self {
            Proc::Pid(pid) => format!("/proc/{pid}/{file}"),
            Proc::Myself => format!("/proc/self/{file}"),
        }
    }

    /// User plus system CPU time consumed so far, in seconds.
    pub fn cpu_seconds(self) -> io::Result<f64> {
        Ok(self.cpu_times()?.total())
    }

    /// User and system CPU time consumed so far.
    pub fn cpu_times(self) -> io::Result<CpuTimes> {
        parse_cpu_times(&fs::read_to_string(self.path("stat"))?)
    }

    /// Resident set size in bytes.
    pub fn rss_bytes(self) -> io::Result<u64> {
        parse_rss_bytes(&fs::read_to_string(self.path("status"))?)
    }

    /// Voluntary context switches so far, summed over the process's threads: how often they
    /// blocked with nothing to do (the process-wide `status` counts the main thread only).
    pub fn voluntary_switches(self) -> io::Result<u64> {
        let mut sum = 0;
        for task in fs::read_dir(self.path("task"))? {
            // A thread that ended since the listing has nothing more to count.
            let Ok(status) = fs::read_to_string(task?.path().join("status")) else {
                continue;
            };
            sum += parse_voluntary_switches(&status)?;
        }
        Ok(sum)
    }
}

/// Several processes sampled as one server (such as nginx's workers): their CPU times and
/// resident sizes are summed. A sample fails if any of them cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group(pub Vec<Proc>);

impl Group {
    /// The summed user and system CPU times.
    pub fn cpu_times(&self) -> io::Result<CpuTimes> {
        self.0.iter().try_fold(CpuTimes::default(), |sum, p| {
            let times = p.cpu_times()?;
            Ok(CpuTimes {
                user: sum.user + times.user,
                system: sum.system + times.system,
            })
        })
    }

    /// The summed resident set size, in bytes.
    pub fn rss_bytes(&self) -> io::Result<u64> {
        self.0.iter().map(|p| p.rss_bytes()).sum()
    }

    /// The summed voluntary context switches of every thread.
    pub fn voluntary_switches(&self) -> io::Result<u64> {
        self.0.iter().map(|p| p.voluntary_switches()).sum()
    }
}

/// CPU time of a process, split by where it was spent, in seconds. The split shows how much
/// of a server's cost is its own code (user) and how much the kernel's work on its behalf
/// (system: for a fan-out mostly the TCP send path, which every server pays alike).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    /// Time in user mode (`utime`).
    pub user: f64,
    /// Time in the kernel on the process's behalf (`stime`).
    pub system: f64,
}

impl CpuTimes {
    /// User plus system time.
    pub fn total(self) -> f64 {
        self.user + self.system
    }

    /// The time spent from `earlier` to `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// utime and stime (fields 14 and 15) of a `/proc/PID/stat` line, in seconds. The command
/// name (field 2) is in parentheses and may hold spaces, so fields are counted after the last
/// `)`.
fn parse_cpu_times(stat: &str) -> io::Result<CpuTimes> {
    let after_name = stat
        .rfind(')')
        .map(|at| &stat[at + 1..])
        .ok_or_else(|| invalid("no ) in stat"))?;
    // After the name: field 3 (state) is index 0, so utime (14) is index 11, stime index 12.
    let mut fields = after_name.split_whitespace().skip(11);
    let mut tick = || -> io::Result<u64> {
        fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| invalid("bad utime/stime in stat"))
    };
    let user = tick()?;
    let system = tick()?;
    Ok(CpuTimes {
        user: user as f64 / USER_HZ,
        system: system as f64 / USER_HZ,
    })
}

/// The `VmRSS:` line of `/proc/PID/status`, in bytes.
fn parse_rss_bytes(status: &str) -> io::Result<u64> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .ok_or_else(|| invalid("no VmRSS in status"))?;
    let kib: u64 = line
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .map_err(|_| invalid("bad VmRSS"))?;
    Ok(kib * 1024)
}

/// The `voluntary_ctxt_switches:` line of a `/proc/PID/task/TID/status`.
fn parse_voluntary_switches(status: &str) -> io::Result<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| invalid("no voluntary_ctxt_switches in status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat =
            "4242 (my (weird) srv) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 3 0";
        let times = parse_cpu_times(stat).unwrap();
        assert!((times.user - 2.5).abs() < 1e-9, "{times:?}");
        assert!((times.system - 0.75).abs() < 1e-9, "{times:?}");
        assert!((times.total() - 3.25).abs() < 1e-9, "{times:?}");
        assert!(parse_cpu_times("garbage").is_err());
    }

    #[test]
    fn parses_status() {
        let status = "Name:\therald\nVmPeak:\t  999 kB\nVmRSS:\t   10240 kB\nThreads:\t3\n";
        assert_eq!(parse_rss_bytes(status).unwrap(), 10 * 1024 * 1024);
        assert!(parse_rss_bytes("Name: x\n").is_err());
    }

    #[test]
    fn parses_voluntary_switches() {
        let status = "Name:\therald-conn-0\nvoluntary_ctxt_switches:\t187937\nnonvoluntary_ctxt_switches:\t2308\n";
        assert_eq!(parse_voluntary_switches(status).unwrap(), 187_937);
        assert!(parse_voluntary_switches("nonvoluntary_ctxt_switches:\t2\n").is_err());
    }

    #[test]
    fn counts_the_switches_of_every_thread() {
        // Another thread blocks on a receive 50 times, each a voluntary switch, while this one
        // spins between its sends instead of sleeping (it makes none): the count must include
        // the other thread's.
        let before = Proc::Myself.voluntary_switches().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel::<()>();
        let (back, done) = std::sync::mpsc::channel::<u64>();
        let blocker = std::thread::spawn(move || {
            while receiver.recv().is_ok() {}
            back.send(Proc::Myself.voluntary_switches().unwrap())
                .unwrap();
        });
        for _ in 0..50 {
            let until = std::time::Instant::now() + std::time::Duration::from_millis(1);
            while std::time::Instant::now() < until {
                std::hint::spin_loop();
            }
            sender.send(()).unwrap();
        }
        drop(sender);
        let during = done.recv().unwrap();
        blocker.join().unwrap();
        assert!(during >= before + 50, "{before} -> {during}");
        assert!(Proc::Pid(u32::MAX).voluntary_switches().is_err());
    }

    #[test]
    fn samples_itself() {
        assert!(Proc::Myself.cpu_seconds().unwrap() >= 0.0);
        assert!(Proc::Myself.rss_bytes().unwrap() > 0);
        assert!(Proc::Pid(u32::MAX).rss_bytes().is_err());
    }

    #[test]
    fn sums_a_group() {
        let one = Group(vec![Proc::Myself]).rss_bytes().unwrap();
        let two = Group(vec![Proc::Myself, Proc::Myself]).rss_bytes().unwrap();
        // Two reads of the same process, a moment apart: about twice one read.
        assert!(two > one * 3 / 2 && two < one * 5 / 2, "{one} {two}");
        let times = Group(vec![Proc::Myself, Proc::Myself]).cpu_times().unwrap();
        assert!(times.user >= 0.0 && times.system >= 0.0, "{times:?}");
        let broken = Group(vec![Proc::Myself, Proc::Pid(u32::MAX)]);
        assert!(broken.rss_bytes().is_err());
        assert!(broken.cpu_times().is_err());
    }
}
