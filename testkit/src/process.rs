//! `liaison` as a child process: a broker or an agent started from the
//! built binary, ready when it prints its listening line, killed (SIGKILL
//! included) and reaped when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{PATIENCE, liaison_bin};

/// A `liaison serve` child process.
pub struct ServeProcess {
    pub child: Child,
    pub url: String,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServeProcess {
    pub fn start(certs: &Path, data: &Path) -> ServeProcess {
        Self::spawn(Self::command(certs, data))
    }

    /// The `liaison serve` command line these tests use.
    pub fn command(certs: &Path, data: &Path) -> Command {
        let mut cmd = Command::new(liaison_bin());
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--retain",
            "0",
            "--metrics",
            "off",
        ])
        .arg("--certs")
        .arg(certs)
        .arg("--data")
        .arg(data);
        cmd
    }

    /// Spawns a prepared `liaison serve` command and waits until it listens.
    pub fn spawn(cmd: Command) -> ServeProcess {
        let (child, url) = spawn_until_ready(cmd, "liaison: listening on ");
        ServeProcess { child, url }
    }

    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// SIGTERM, and the exit status once it has stopped.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        terminate(&mut self.child)
    }
}

/// SIGTERM to `child`, and its exit status once it has stopped.
fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = i32::try_from(child.id()).expect("pid");
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM");
    wait_bounded(child)
}

/// Runs a command that must exit by itself (within [`PATIENCE`]); returns
/// its status and what it wrote to standard error, with its standard
/// output after it.
pub fn run_to_exit(mut cmd: Command) -> (std::process::ExitStatus, String) {
    let mut child = cmd
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let read = |mut from: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = from.read_to_string(&mut text);
            text
        })
    };
    let stderr = read(Box::new(child.stderr.take().expect("stderr")));
    let stdout = read(Box::new(child.stdout.take().expect("stdout")));
    let status = wait_bounded(&mut child);
    let text = stderr.join().expect("stderr reader") + &stdout.join().expect("stdout reader");
    (status, text)
}

/// Waits for a child to exit, killing it (and failing the test) when it
/// is still running after [`PATIENCE`].
fn wait_bounded(child: &mut Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `liaison agent` child process (for SIGKILL tests).
pub struct AgentProcess {
    pub child: Child,
    pub url: String,
}

impl AgentProcess {
    /// Starts `liaison agent` with the node certificate `name` in `certs`.
    pub fn start(upstream: &str, certs: &Path, name: &str, data: &Path) -> AgentProcess {
        Self::spawn(Self::command(upstream, certs, name, data))
    }

    /// The `liaison agent` command line these tests use.
    pub fn command(upstream: &str, certs: &Path, name: &str, data: &Path) -> Command {
        let mut cmd = Command::new(liaison_bin());
        cmd.args([
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--max-backoff",
            "500ms",
            "--keepalive",
            "1s",
            "--metrics",
            "off",
        ])
        .args(["--upstream", upstream, "--name", name])
        .arg("--certs")
        .arg(certs)
        .arg("--data")
        .arg(data);
        cmd
    }

    /// Spawns a prepared `liaison agent` command and waits until it
    /// listens.
    pub fn spawn(cmd: Command) -> AgentProcess {
        let (child, url) = spawn_until_ready(cmd, "liaison agent: listening on ");
        AgentProcess { child, url }
    }

    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// SIGTERM, and the exit status once it has stopped (its store
    /// flushed and released).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        terminate(&mut self.child)
    }

    /// A plaintext client of its local listener.
    pub async fn client(&self) -> super::Client {
        liaison::client::connect(&self.url, None)
            .await
            .expect("connect to agent")
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns a `liaison` process and waits for its readiness line on standard
/// output (`<prefix><url>`); returns the child and the URL.
fn spawn_until_ready(mut cmd: Command, prefix: &str) -> (Child, String) {
    let mut child = cmd
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn liaison");
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).expect("readiness line");
    // Keep draining what the process prints after the readiness line.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let url = line
        .trim()
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("unexpected readiness line: {line:?}"))
        .to_owned();
    (child, url)
}
