//! Drives the real `statefun-lambda` binary: start, kill -9, restart, talk HTTP.

#![allow(dead_code, unreachable_pub)] // each test file uses a different part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use statefun_lambda::embedded::{Settled, Settling, Status};

/// Lines a child printed, shared with the reader thread.
pub type Lines = Arc<Mutex<Vec<String>>>;

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub stdout: Lines,
    pub stderr: Lines,
}

fn collect(stream: impl Read + Send + 'static, lines: Lines) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            lines.lock().expect("lines").push(line);
        }
    });
}

impl Server {
    /// Starts `statefun-lambda run` on a free port and waits until it listens.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_binary(env!("CARGO_BIN_EXE_statefun-lambda"), data_dir, extra)
    }

    /// Starts `<binary> run` (any binary built on statefun-lambda) likewise.
    pub fn start_binary(binary: &str, data_dir: &Path, extra: &[&str]) -> Server {
        let mut command = Command::new(binary);
        command.args(["run", "--port", "0", "--data-dir"]);
        command.arg(data_dir).args(extra);
        Self::spawn(command)
    }

    /// Starts `statefun-lambda run` with its open-files limit (soft and hard) lowered
    /// to `open_files`, as a service manager may start it.
    pub fn start_with_open_files(data_dir: &Path, extra: &[&str], open_files: u64) -> Server {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {open_files} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_statefun-lambda"))
            .args(["run", "--port", "0", "--data-dir"])
            .arg(data_dir)
            .args(extra);
        Self::spawn(command)
    }

    fn spawn(mut command: Command) -> Server {
        let mut child = command
            // STATEFUN_TEST_LOG: another filter, to see more of a failing test's child.
            .env(
                "RUST_LOG",
                std::env::var("STATEFUN_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn statefun-lambda");
        let stdout: Lines = Arc::default();
        let stderr: Lines = Arc::default();
        collect(child.stdout.take().expect("stdout"), stdout.clone());
        collect(child.stderr.take().expect("stderr"), stderr.clone());
        // Until it listens or exits; the guard catches a hang, not a slow machine.
        let deadline = Instant::now() + Settling::STALL;
        loop {
            let found = stderr.lock().expect("lines").iter().find_map(|l| {
                l.split("listening on http://")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|a| a.parse().ok())
            });
            if let Some(addr) = found {
                return Server {
                    child,
                    addr,
                    stdout,
                    stderr,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "server exited with {status}: {:?}",
                    stderr.lock().expect("lines")
                );
            }
            assert!(
                Instant::now() < deadline,
                "server hangs at start: {:?}",
                stderr.lock().expect("lines")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(mut self) -> (Lines, Lines) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.stdout.clone(), self.stderr.clone())
    }

    /// Sends it a signal (`TERM`, `INT`, …).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{name} {pid}");
    }

    /// Stops it as a service manager would (SIGTERM) and waits for its exit.
    pub fn stop(mut self) -> (Lines, Lines) {
        self.signal("TERM");
        let status = self.wait_exit(Settling::STALL);
        assert!(status.success(), "a stop must exit cleanly: {status}");
        (self.stdout.clone(), self.stderr.clone())
    }

    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn post(
        &self,
        path: &str,
        content_type: Option<&str>,
        key: Option<&str>,
        body: &[u8],
    ) -> std::io::Result<(u16, String)> {
        let mut headers = Vec::new();
        if let Some(ct) = content_type {
            headers.push(("Content-Type", ct));
        }
        if let Some(k) = key {
            headers.push(("Idempotency-Key", k));
        }
        http(self.addr, "POST", path, &headers, body)
    }

    /// `GET /status`: what the runtime has in hand.
    pub fn status(&self) -> Status {
        let (status, body) = http(self.addr, "GET", "/status", &[], b"").expect("GET /status");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// Waits until `check` holds, for as long as the runtime works toward it: false
    /// once it is idle (or stalled) and `check` still fails. No wall-clock deadline.
    pub fn settles(&self, mut check: impl FnMut() -> bool) -> bool {
        let mut settling = Settling::default();
        loop {
            if check() {
                return true;
            }
            if settling.observe(self.status(), now_ms()) != Settled::Working {
                return check();
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until the runtime has nothing left to do.
    pub fn settle(&self) {
        let mut settling = Settling::default();
        while settling.observe(self.status(), now_ms()) == Settled::Working {
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = http(self.addr, "GET", path, &[], b"").expect("GET");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("JSON state")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on a fresh connection; returns status and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Egress lines on stdout, parsed.
pub fn egress(lines: &Lines) -> Vec<serde_json::Value> {
    lines
        .lock()
        .expect("lines")
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
