//! The embedded runtime at the machine's limits, measured on the real binary:
//!
//! 1. peak RSS while 1 GiB of 128 KiB payloads is offered to a function type whose
//!    endpoint is down (every accepted message stays queued), against
//!    `--max-queued-bytes`;
//! 2. probe POSTs to a healthy function, one at a time, p50/p99 — alone, then while
//!    another function type's backlog sits at its share and a client keeps flooding it;
//! 3. the time from freed disk space to the first 202 (a full tmpfs; needs root);
//! 4. a soak: throughput measured over 10 s, then half of it offered for
//!    `STATEFUN_SOAK_SECS` (default 1800; 0 skips it) with RSS and open descriptors
//!    sampled every 10 s, and every accepted message checked applied once.
//!
//! `cargo bench -p statefun-examples --bench limits`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_statefun-lambda");
const COMMAND: &str = "cargo bench -p statefun-examples --bench limits";

struct Runtime {
    child: Child,
    addr: SocketAddr,
}

impl Runtime {
    fn start(data: &std::path::Path, extra: &[&str]) -> Runtime {
        let mut child = Command::new(BIN)
            .args(["run", "--port", "0", "--data-dir"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start statefun-lambda");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .split("listening on http://")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx.recv().expect("the runtime listens");
        Runtime { child, addr }
    }

    fn proc_status(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("a /proc status field")
    }

    /// Resident and peak resident memory, MiB.
    fn rss_mib(&self) -> (f64, f64) {
        (
            self.proc_status("VmRSS:") as f64 / 1024.0,
            self.proc_status("VmHWM:") as f64 / 1024.0,
        )
    }

    fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, |d| d.count())
    }

    /// Waits until nothing is queued, in flight or scheduled.
    fn idle(&self) {
        let mut c = Client::connect(self.addr);
        loop {
            let (_, body) = c.request("GET", "/status", None, b"");
            let s: serde_json::Value = serde_json::from_slice(&body).expect("status");
            if s["queued"] == 0 && s["calling"] == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A keep-alive HTTP/1.1 client: one request at a time.
struct Client {
    stream: BufReader<TcpStream>,
    addr: SocketAddr,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream: BufReader::new(stream),
            addr,
        }
    }

    fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        head.push_str("\r\n");
        let stream = self.stream.get_mut();
        stream.write_all(head.as_bytes()).expect("send");
        stream.write_all(body).expect("send body");
        let mut line = String::new();
        self.stream.read_line(&mut line).expect("status line");
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status");
        let mut length = 0;
        loop {
            line.clear();
            self.stream.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().expect("length");
            }
        }
        let mut answer = vec![0; length];
        self.stream.read_exact(&mut answer).expect("body");
        (status, answer)
    }
}

const STRING: Option<&str> = Some("application/vnd.io.statefun.types/string");
const LONG: Option<&str> = Some("application/vnd.io.statefun.types/long");

fn down_module(dir: &std::path::Path) -> String {
    let path = dir.join("module.yaml");
    std::fs::write(&path, include_str!("../tests/fixtures/down_endpoint.yaml"))
        .expect("module.yaml");
    path.display().to_string()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// 1 GiB offered to a function type that applies nothing.
fn memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let module = down_module(dir.path());
    let limit: usize = std::env::var("STATEFUN_QUEUED_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(128 << 20, |mib| mib << 20);
    let rt = Runtime::start(
        &dir.path().join("data"),
        &[
            "--module",
            &module,
            "--max-queued-share",
            "100",
            "--max-queued-bytes",
            &limit.to_string(),
        ],
    );
    let (_, idle_peak) = rt.rss_mib();
    let payload = Arc::new(vec![b'x'; 128 << 10]);
    let accepted = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (payload, accepted, addr) = (payload.clone(), accepted.clone(), rt.addr);
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for i in 0..2048 {
                    let (status, _) =
                        c.request("POST", &format!("/slow/echo/{t}-{i}"), STRING, &payload);
                    if status == 202 {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client");
    }
    let (rss, peak) = rt.rss_mib();
    let accepted = accepted.load(Ordering::Relaxed);
    println!(
        "memory: 1024 MiB offered in 8192 POSTs of 128 KiB to a type whose endpoint is down; \
         {accepted} accepted ({:.0} MiB), the rest refused at once; --max-queued-bytes {} MiB; \
         peak RSS {peak:.0} MiB (idle {idle_peak:.0} MiB), RSS after {rss:.0} MiB",
        accepted as f64 * 128.0 / 1024.0,
        limit >> 20
    );
}

/// Sequential probe POSTs to a healthy function: latencies in ms, sorted.
fn probes(addr: SocketAddr, n: usize) -> Vec<f64> {
    let mut c = Client::connect(addr);
    let mut took: Vec<f64> = (0..n)
        .map(|i| {
            let started = Instant::now();
            let (status, body) =
                c.request("POST", &format!("/example/counter/{}", i % 100), LONG, b"1");
            assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    took.sort_by(f64::total_cmp);
    took
}

fn isolation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let module = down_module(dir.path());
    let rt = Runtime::start(&dir.path().join("data"), &["--module", &module]);
    let alone = probes(rt.addr, 2_000);
    // Another type's backlog to its share (50 % of 128 MiB), and a client that keeps
    // offering it more.
    let payload = vec![b'x'; 64 << 10];
    let mut c = Client::connect(rt.addr);
    let mut backlog = 0;
    while c
        .request("POST", &format!("/slow/echo/{backlog}"), STRING, &payload)
        .0
        == 202
    {
        backlog += 1;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let flood = {
        let (stop, refused, addr, payload) = (stop.clone(), refused.clone(), rt.addr, payload);
        std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            while !stop.load(Ordering::Relaxed) {
                if c.request("POST", "/slow/echo/more", STRING, &payload).0 == 429 {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let loaded = probes(rt.addr, 2_000);
    stop.store(true, Ordering::Relaxed);
    flood.join().expect("flood");
    println!(
        "isolation: probe POSTs to example/counter, one at a time: alone p50 {:.2} ms, p99 \
         {:.2} ms; with slow/echo's backlog at its share ({backlog} x 64 KiB) and a flood of \
         it answered 429 ({} times meanwhile): p50 {:.2} ms, p99 {:.2} ms",
        percentile(&alone, 0.5),
        percentile(&alone, 0.99),
        refused.load(Ordering::Relaxed),
        percentile(&loaded, 0.5),
        percentile(&loaded, 0.99),
    );
}

/// Freed disk space to the first 202, over a few fill-and-free cycles on a tmpfs.
fn disk() {
    let mount = tempfile::tempdir().expect("tempdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"])
        .arg(mount.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        println!("disk: skipped (mounting a tmpfs needs root)");
        return;
    }
    let rt = Runtime::start(&mount.path().join("data"), &[]);
    let mut c = Client::connect(rt.addr);
    let greet = Some("application/vnd.example/GreetRequest");
    let body = format!(r#"{{"name": "{}"}}"#, "n".repeat(16 << 10));
    let mut took = Vec::new();
    for cycle in 0..5 {
        let filler = mount.path().join("filler");
        let mut file = std::fs::File::create(&filler).expect("filler");
        for size in [64 << 10, 1] {
            while file.write_all(&vec![0; size]).is_ok() {}
        }
        let mut i = 0;
        while c
            .request(
                "POST",
                &format!("/example/person/{cycle}-{i}"),
                greet,
                body.as_bytes(),
            )
            .0
            == 202
        {
            i += 1;
        }
        drop(file);
        std::fs::remove_file(&filler).expect("free");
        let freed = Instant::now();
        while c
            .request(
                "POST",
                &format!("/example/person/{cycle}"),
                greet,
                body.as_bytes(),
            )
            .0
            != 202
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        took.push(freed.elapsed().as_secs_f64() * 1e3);
    }
    drop(rt);
    let _ = Command::new("umount").arg("-l").arg(mount.path()).status();
    took.sort_by(f64::total_cmp);
    println!(
        "disk: freed space to the first 202, 5 cycles on a full 32 MiB tmpfs: median {:.0} ms, \
         max {:.0} ms (the accept file is tried every 250 ms)",
        percentile(&took, 0.5),
        took[took.len() - 1]
    );
}

/// POSTs to `example/counter/{i % 1000}` from `clients` threads for `secs`, each
/// paced to `rate` per second in all (unpaced if None); calls `sample` every 10 s.
fn offer(
    addr: SocketAddr,
    clients: usize,
    secs: u64,
    rate: Option<f64>,
    mut sample: impl FnMut(u64),
) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let (stop, accepted) = (stop.clone(), accepted.clone());
            let interval = rate.map(|r| Duration::from_secs_f64(clients as f64 / r));
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let started = Instant::now();
                let mut sent = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(interval) = interval {
                        let due = started + interval * sent;
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    let path = format!("/example/counter/{}", (t as u32 * 7919 + sent) % 1000);
                    if c.request("POST", &path, LONG, b"1").0 == 202 {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    sent += 1;
                }
            })
        })
        .collect();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(10).min(Duration::from_secs(secs)));
        sample(started.elapsed().as_secs());
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("client");
    }
    accepted.load(Ordering::Relaxed)
}

fn soak(secs: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::start(&dir.path().join("data"), &[]);
    let clients = 16;
    let warm = offer(rt.addr, clients, 10, None, |_| {});
    let measured = warm as f64 / 10.0;
    rt.idle();
    let rate = measured / 2.0;
    let mut samples: Vec<(u64, f64, usize)> = Vec::new();
    let accepted = offer(rt.addr, clients, secs, Some(rate), |at| {
        samples.push((at, rt.rss_mib().0, rt.open_files()));
    });
    rt.idle();
    let mut c = Client::connect(rt.addr);
    let applied: u64 = (0..1000)
        .map(|i| {
            let (_, body) = c.request("GET", &format!("/example/counter/{i}"), None, b"");
            let state: serde_json::Value = serde_json::from_slice(&body).expect("state");
            state["state"]["count"]["value"].as_u64().unwrap_or(0)
        })
        .sum();
    let first = samples.first().copied().unwrap_or_default();
    let last = samples.last().copied().unwrap_or_default();
    let max_rss = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    let max_fds = samples.iter().map(|s| s.2).max().unwrap_or(0);
    println!(
        "soak: measured {measured:.0} msg/s over HTTP ({clients} clients); then {rate:.0} msg/s \
         for {secs} s: {accepted} accepted, {} applied of {} (exactly once: {}); RSS {:.0} MiB \
         at {} s, {:.0} MiB at {} s, max {max_rss:.0} MiB; open files {} -> {}, max {max_fds}",
        applied,
        accepted + warm,
        applied == accepted + warm,
        first.1,
        first.0,
        last.1,
        last.0,
        first.2,
        last.2,
    );
    statefun_e2e::plot::lines(
        "soak_rss",
        &format!("embedded runtime at {rate:.0} msg/s (half of {measured:.0}): RSS"),
        COMMAND,
        ("seconds", "RSS, MiB"),
        false,
        &[(
            "RSS",
            samples
                .iter()
                .map(|(at, rss, _)| (*at as f64, *rss))
                .collect(),
        )],
    );
}

fn main() {
    memory();
    if std::env::var_os("STATEFUN_MEMORY_ONLY").is_some() {
        return;
    }
    isolation();
    disk();
    let secs = std::env::var("STATEFUN_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1800);
    if secs > 0 {
        soak(secs);
    }
}
