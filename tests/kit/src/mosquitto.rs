//! Debian's mosquitto as a managed process: its config and log in the test's temp directory,
//! listening on 127.0.0.1 only.

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;

use crate::process::Proc;

/// A running mosquitto broker. Dropping it kills it.
#[derive(Debug)]
pub struct Mosquitto {
    /// The loopback port it listens on.
    pub port: u16,
    /// Its config file (`mosquitto-<port>.conf` in the directory it was started in).
    pub conf: PathBuf,
    proc: Proc,
}

impl Mosquitto {
    /// Anonymous access, no persistence, MQTT packets up to `max_packet_size` bytes.
    pub fn anonymous(dir: &Path, port: u16, max_packet_size: usize) -> Mosquitto {
        Self::start(
            dir,
            port,
            &format!(
                "allow_anonymous true\npersistence false\nmax_packet_size {max_packet_size}\n"
            ),
        )
    }

    /// Starts mosquitto on `127.0.0.1:port` with `settings` (config lines after the listener)
    /// and waits until it accepts connections.
    pub fn start(dir: &Path, port: u16, settings: &str) -> Mosquitto {
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(&conf, format!("listener {port} 127.0.0.1\n{settings}"))
            .expect("write mosquitto.conf");
        let proc = Proc::new(
            "mosquitto",
            [std::ffi::OsString::from("-c"), conf.clone().into()],
            &[],
            dir.join(format!("mosquitto-{port}.log")),
        );
        let mut m = Mosquitto { port, conf, proc };
        m.restart();
        m
    }

    /// Kills it with SIGKILL (if running) and starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.proc.kill9();
        self.proc
            .start()
            .expect("mosquitto is installed (apt-get install mosquitto)");
        let port = self.port;
        crate::eventually(10, "mosquitto listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
    }

    /// Makes it reread its password and ACL files (SIGHUP).
    pub fn reload(&self) {
        self.proc.signal(Signal::SIGHUP).expect("signal mosquitto");
    }

    /// Kills it with SIGKILL.
    pub fn stop(&mut self) {
        self.proc.kill9();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listens_on_its_port_and_stops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = crate::free_port();
        let mut m = Mosquitto::anonymous(dir.path(), port, 1 << 20);
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("listening");
        m.stop();
        crate::eventually(10, "the port closed", || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .is_err()
                .then_some(())
        });
        m.restart();
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("listening again");
    }
}
