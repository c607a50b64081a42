//! A local Lambda Runtime API (the HTTP interface Lambda gives a custom runtime's
//! process): the real binary runs against it as it runs on Lambda, started with
//! `AWS_LAMBDA_RUNTIME_API` and the function's environment. The test queues events,
//! reads the answers, and learns when the process first asked for work (its init time).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Inner {
    events: VecDeque<(String, String)>,
    answers: Vec<(String, Result<String, String>)>,
    init_error: Option<String>,
    first_next: Option<Instant>,
    next_id: u64,
}

/// The Runtime API on a free loopback port, served by threads until dropped.
#[derive(Debug, Clone)]
pub struct LambdaRuntimeApi {
    pub addr: SocketAddr,
    state: Arc<(Mutex<Inner>, Condvar)>,
}

/// A request as read off the connection.
struct Request {
    method: String,
    path: String,
    body: String,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &str) -> bool {
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    stream.write_all(out.as_bytes()).is_ok()
}

impl LambdaRuntimeApi {
    pub fn start() -> LambdaRuntimeApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the Runtime API");
        let api = LambdaRuntimeApi {
            addr: listener.local_addr().expect("addr"),
            state: Arc::default(),
        };
        let serving = api.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let api = serving.clone();
                std::thread::spawn(move || api.serve(stream));
            }
        });
        api
    }

    fn serve(&self, stream: TcpStream) {
        let Ok(mut writer) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(stream);
        while let Some(request) = read_request(&mut reader) {
            let (lock, ready) = &*self.state;
            let path = request.path.trim_start_matches("/2018-06-01/runtime");
            let ok = if request.method == "GET" && path == "/invocation/next" {
                let mut inner = lock.lock().expect("state");
                inner.first_next.get_or_insert_with(Instant::now);
                let (id, event) = loop {
                    if let Some(next) = inner.events.pop_front() {
                        break next;
                    }
                    inner = ready.wait(inner).expect("state");
                };
                drop(inner);
                let deadline = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis())
                    + 30_000;
                respond(
                    &mut writer,
                    "200 OK",
                    &[
                        ("Content-Type", "application/json".into()),
                        ("Lambda-Runtime-Aws-Request-Id", id),
                        ("Lambda-Runtime-Deadline-Ms", deadline.to_string()),
                        (
                            "Lambda-Runtime-Invoked-Function-Arn",
                            "arn:aws:lambda:us-east-1:123456789012:function:local".into(),
                        ),
                        ("Lambda-Runtime-Trace-Id", "Root=1-0-0".into()),
                    ],
                    &event,
                )
            } else if request.method == "POST" && path == "/init/error" {
                lock.lock().expect("state").init_error = Some(request.body);
                ready.notify_all();
                respond(&mut writer, "202 Accepted", &[], "{}")
            } else if let Some(rest) = path.strip_prefix("/invocation/") {
                let (id, kind) = rest.split_once('/').unwrap_or((rest, ""));
                let answer = match kind {
                    "response" => Ok(request.body),
                    _ => Err(request.body),
                };
                lock.lock()
                    .expect("state")
                    .answers
                    .push((id.to_string(), answer));
                ready.notify_all();
                respond(&mut writer, "202 Accepted", &[], "{}")
            } else {
                respond(&mut writer, "404 Not Found", &[], "{}")
            };
            if !ok {
                return;
            }
        }
    }

    /// Starts `binary` as Lambda would, as the function `name` with `env` added.
    pub fn spawn(&self, binary: &str, name: &str, env: &[(&str, &str)]) -> Child {
        Command::new(binary)
            .env("AWS_LAMBDA_RUNTIME_API", self.addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "local")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the Lambda binary")
    }

    /// Hands `event` to the process and waits for its answer (a response, or the
    /// error it reported) while `alive` holds.
    pub fn invoke(&self, event: &str, mut alive: impl FnMut() -> bool) -> Result<String, String> {
        let (lock, ready) = &*self.state;
        let id = {
            let mut inner = lock.lock().expect("state");
            inner.next_id += 1;
            let id = format!("req-{}", inner.next_id);
            inner.events.push_back((id.clone(), event.to_string()));
            id
        };
        ready.notify_all();
        let mut inner = lock.lock().expect("state");
        loop {
            if let Some(i) = inner.answers.iter().position(|(a, _)| *a == id) {
                return inner.answers.remove(i).1;
            }
            if let Some(e) = &inner.init_error {
                return Err(format!("init error: {e}"));
            }
            assert!(alive(), "the Lambda process exited before answering");
            inner = ready
                .wait_timeout(inner, Duration::from_millis(50))
                .expect("state")
                .0;
        }
    }

    /// When the process first asked for an event: the end of its init.
    pub fn first_next(&self) -> Option<Instant> {
        self.state.0.lock().expect("state").first_next
    }
}
