//! Real child processes for tests: output captured to a log file (appended across restarts),
//! SIGKILL or SIGTERM on demand, killed on drop, and the tail of the log printed when the test is
//! failing.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// How many log lines a failing test prints per process.
const TAIL_LINES: usize = 80;

/// A managed child process that can be restarted with the same command.
#[derive(Debug)]
pub struct Proc {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    /// Where stdout and stderr go (appended across restarts).
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Prepares (does not start) a process.
    pub fn new<A: Into<OsString>>(
        program: impl AsRef<Path>,
        args: impl IntoIterator<Item = A>,
        env: &[(String, String)],
        log: impl AsRef<Path>,
    ) -> Proc {
        Proc {
            program: program.as_ref().into(),
            args: args.into_iter().map(Into::into).collect(),
            env: env.into(),
            log: log.as_ref().into(),
            child: None,
        }
    }

    /// Adds an environment variable for the next start (a later one wins over an earlier one).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.into(), value.into()));
    }

    /// Starts it (again).
    pub fn start(&mut self) -> std::io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether it is running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The process id while started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` to it, if started.
    pub fn signal(&self, signal: Signal) -> nix::Result<()> {
        match self.pid() {
            Some(pid) => nix::sys::signal::kill(Pid::from_raw(pid as i32), signal),
            None => Ok(()),
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        let _ = self.signal(Signal::SIGTERM);
        if let Some(mut c) = self.child.take() {
            let until = Instant::now() + grace;
            while Instant::now() < until {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The last `n` lines of the log.
    pub fn tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- {} (last {TAIL_LINES} lines) ----\n{}",
                self.log.display(),
                self.tail(TAIL_LINES)
            );
        }
        self.kill9();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, script: &str) -> Proc {
        Proc::new("sh", ["-c", script], &[], dir.join("sh.log"))
    }

    #[test]
    fn output_goes_to_the_log_and_restarts_append() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut p = Proc::new(
            "sh",
            ["-c", "echo $GREETING"],
            &[("GREETING".into(), "hello".into())],
            dir.path().join("p.log"),
        );
        for _ in 0..2 {
            p.start().expect("start");
            crate::eventually(10, "the process exited", || (!p.running()).then_some(()));
        }
        assert_eq!(p.tail(10), "hello\nhello");
        assert_eq!(p.tail(1), "hello");
    }

    #[test]
    fn terminate_and_kill9_end_the_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut p = sh(dir.path(), "exec sleep 30");
        p.start().expect("start");
        assert!(p.running());
        p.terminate(Duration::from_secs(10));
        assert!(!p.running());
        assert_eq!(p.pid(), None);

        let mut p = sh(
            dir.path(),
            "trap '' TERM; echo ready; while :; do sleep 1; done",
        );
        p.start().expect("start");
        crate::eventually(10, "the trap installed", || {
            (p.tail(1) == "ready").then_some(())
        });
        let pid = p.pid().expect("pid");
        p.terminate(Duration::from_millis(300));
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "a process that ignores SIGTERM is killed after the grace"
        );
    }

    #[test]
    fn drop_kills_the_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut p = sh(dir.path(), "exec sleep 30");
        p.start().expect("start");
        let pid = p.pid().expect("pid");
        drop(p);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
