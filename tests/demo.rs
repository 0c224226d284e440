//! `portcullis demo`: the built binary, on free ports, prints curl blocks;
//! each block, sent as written (its method, URL, headers and body parsed
//! from the command line, not by a curl binary), gets the status and error
//! code the demo said, and the redaction blocks' answers lack or carry the
//! member they name (which the demo IAM sends either way: the gateway
//! removes it). SIGINT stops it cleanly. `config/demo.toml` passes
//! `portcullis check`.

mod common;

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// How long the demo may take to print its commands.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The demo process; killed (and reaped) on drop, also when a test panics.
struct Demo {
    child: Child,
    lines: Receiver<String>,
    stdout: Vec<String>,
    stderr: Arc<Mutex<String>>,
    gateway_port: u16,
    iam_port: u16,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three distinct free ports.
fn three_ports() -> (u16, u16, u16) {
    loop {
        let (a, b, c) = (free_port(), free_port(), free_port());
        if a != b && b != c && a != c {
            return (a, b, c);
        }
    }
}

impl Demo {
    fn start() -> Demo {
        let (port, admin, iam) = three_ports();
        let mut child = Command::new(BIN)
            .args([
                "demo",
                "--port",
                &port.to_string(),
                "--admin-port",
                &admin.to_string(),
                "--iam-port",
                &iam.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn portcullis demo");
        let (tx, lines) = channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        let mut demo = Demo {
            child,
            lines,
            stdout: Vec::new(),
            stderr,
            gateway_port: port,
            iam_port: iam,
        };
        demo.read_until(START_TIMEOUT, |l| l.starts_with("# Ctrl-C"));
        demo
    }

    /// Collects stdout lines until one satisfies `done`; panics after `timeout`.
    fn read_until(&mut self, timeout: Duration, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) => {
                    let finished = done(&line);
                    self.stdout.push(line);
                    if finished {
                        return;
                    }
                }
                Err(_) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        panic!(
                            "the demo exited ({status}) early.\nstdout:\n{}\nstderr:\n{}",
                            self.stdout.join("\n"),
                            self.stderr()
                        );
                    }
                }
                Err(_) => panic!(
                    "the demo printed no end line within {timeout:?}.\nstdout:\n{}\nstderr:\n{}",
                    self.stdout.join("\n"),
                    self.stderr()
                ),
            }
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// One printed block.
#[derive(Debug)]
struct Block {
    title: String,
    status: u16,
    code: Option<String>,
    /// `, FIELD removed|kept` of the expect line.
    member: Option<Member>,
    curl: String,
}

/// A top-level member of the JSON answer the gateway removes or keeps.
#[derive(Debug, Clone, PartialEq)]
struct Member {
    name: String,
    kept: bool,
}

/// `FIELD removed` or `FIELD kept`.
fn parse_member(text: &str) -> Member {
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        [name, "removed"] => Member {
            name: name.to_string(),
            kept: false,
        },
        [name, "kept"] => Member {
            name: name.to_string(),
            kept: true,
        },
        _ => panic!("bad body expectation {text:?}"),
    }
}

/// What is wrong with `resp`'s body for `member`: it must be a JSON object
/// holding `member.name` as a non-empty string, or not holding it at all.
fn member_problems(resp: &RawResponse, member: &Member) -> Vec<String> {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&resp.body) else {
        return vec![format!(
            "the body is not a JSON object: {}",
            resp.body_str()
        )];
    };
    let value = body.get(&member.name);
    let has = value.and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    match (member.kept, value) {
        (true, _) if has => Vec::new(),
        (true, _) => vec![format!("no {} in {}", member.name, resp.body_str())],
        (false, None) if body.contains_key("id") => Vec::new(),
        (false, None) => vec![format!("not the record: {}", resp.body_str())],
        (false, Some(_)) => vec![format!("{} not removed", member.name)],
    }
}

/// The `# expect:` blocks of the demo's output.
fn parse_blocks(lines: &[String]) -> Vec<Block> {
    let mut blocks = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(expect) = line.strip_prefix("# expect: ") else {
            continue;
        };
        let (expect, member) = match expect.split_once(", ") {
            Some((head, member)) => (head, Some(parse_member(member))),
            None => (expect, None),
        };
        let mut words = expect.split_whitespace();
        let status = words
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad expect line {line:?}"));
        let code = words.next().map(str::to_string);
        let curl = lines
            .get(i + 1)
            .filter(|l| l.starts_with("curl "))
            .unwrap_or_else(|| panic!("no curl line after {line:?}"))
            .clone();
        let title = i
            .checked_sub(1)
            .and_then(|j| lines.get(j))
            .cloned()
            .unwrap_or_default();
        blocks.push(Block {
            title,
            status,
            code,
            member,
            curl,
        });
    }
    blocks
}

/// Splits a POSIX shell command line into words: single quotes (with the
/// `'\''` idiom), double quotes and backslash escapes.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(next) = chars.next() {
                                word.push(next);
                            }
                        }
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// What a curl command line asks for.
#[derive(Debug, Clone)]
struct CurlRequest {
    method: String,
    addr: SocketAddr,
    target: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
}

fn parse_curl(line: &str) -> CurlRequest {
    let words = shell_words(line);
    assert_eq!(words.first().map(String::as_str), Some("curl"), "{line}");
    let mut method = None;
    let mut url = None;
    let mut headers = Vec::new();
    let mut body = None;
    let mut args = words[1..].iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-sS" | "-s" | "-S" | "-i" => {}
            "-X" => method = args.next().cloned(),
            "-H" => {
                let h = args.next().expect("-H value");
                let (name, value) = h.split_once(':').expect("header NAME: value");
                headers.push((name.trim().to_string(), value.trim().to_string()));
            }
            "--data" | "-d" => body = args.next().cloned(),
            other if other.starts_with("http://") => url = Some(other.to_string()),
            other => panic!("unexpected curl argument {other:?} in {line}"),
        }
    }
    let url = url.expect("a URL");
    let rest = url.strip_prefix("http://").expect("http URL");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    CurlRequest {
        method: method.unwrap_or_else(|| if body.is_some() { "POST" } else { "GET" }.into()),
        addr: authority.parse().expect("IP:port authority"),
        target: path.to_string(),
        headers,
        body,
    }
}

fn send(req: &CurlRequest) -> RawResponse {
    let headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    request(
        req.addr,
        &req.method,
        &req.target,
        &headers,
        req.body.as_deref().map(str::as_bytes),
    )
}

#[test]
fn every_printed_command_gets_the_status_the_demo_says_and_ctrl_c_stops_it() {
    let mut demo = Demo::start();
    let blocks = parse_blocks(&demo.stdout);

    // The scenarios the demo promises.
    let expectations: Vec<(u16, Option<&str>)> = blocks
        .iter()
        .map(|b| (b.status, b.code.as_deref()))
        .collect();
    for wanted in [
        (403, Some("insufficient_entitlements")),
        (403, Some("client_ip_denied")),
        (403, Some("client_disabled")),
        (403, Some("privilege_escalation")),
    ] {
        assert!(
            expectations.contains(&wanted),
            "no block expecting {wanted:?}: {blocks:#?}"
        );
    }
    assert!(
        blocks
            .iter()
            .any(|b| b.status == 204 || (b.status == 200 && b.curl.contains("-X PUT"))),
        "an allowed update"
    );
    assert!(
        blocks
            .iter()
            .any(|b| b.status == 200 && b.curl.contains("/metrics")),
        "a metrics scrape"
    );
    for kept in [false, true] {
        let wanted = Member {
            name: "clientSecret".into(),
            kept,
        };
        assert!(
            blocks
                .iter()
                .any(|b| b.status == 200 && b.member.as_ref() == Some(&wanted)),
            "no block expecting {wanted:?}: {blocks:#?}"
        );
    }
    let iam = SocketAddr::from(([127, 0, 0, 1], demo.iam_port));

    // Twice: every block is repeatable.
    let mut cases = Cases::new();
    for round in 1..=2 {
        for b in &blocks {
            let req = parse_curl(&b.curl);
            let resp = send(&req);
            let label = format!("round {round}: {} ({} {})", b.title, req.method, req.target);
            let mut problems = Vec::new();
            if resp.status != b.status {
                problems.push(format!("status {} (expected {})", resp.status, b.status));
            }
            if let Some(code) = &b.code {
                if resp.error_code().as_deref() != Some(code.as_str()) {
                    problems.push(format!("error {:?} (expected {code:?})", resp.error_code()));
                }
            }
            if req.addr.port() == demo.gateway_port && resp.header("x-request-id").is_none() {
                problems.push("no X-Request-Id".into());
            }
            if let Some(member) = &b.member {
                problems.extend(member_problems(&resp, member));
                // The demo IAM itself sends the member: removing it is the
                // gateway's doing, not the service's.
                let direct = send(&CurlRequest {
                    addr: iam,
                    ..req.clone()
                });
                let sent = Member {
                    kept: true,
                    ..member.clone()
                };
                for p in member_problems(&direct, &sent) {
                    problems.push(format!("from the demo IAM directly: {p}"));
                }
            }
            cases.check(&label, problems, Some(&resp));
        }
    }
    cases.finish();

    // Ctrl-C: the process exits 0 within a bounded time and removes its
    // temporary directory.
    let workdir = demo
        .stdout
        .iter()
        .find_map(|l| l.trim().strip_prefix("config"))
        .map(|rest| Path::new(rest.trim()).parent().expect("dir").to_path_buf())
        .expect("the config line");
    assert!(
        workdir.join("key/private.pem").exists(),
        "{}",
        workdir.display()
    );
    let pid = demo.child.id().to_string();
    let kill = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = demo.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the demo ignored SIGINT for 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "exit {status}; stderr:\n{}",
        demo.stderr()
    );
    assert!(!workdir.exists(), "{} left behind", workdir.display());
}

#[test]
fn a_busy_port_is_a_precise_error() {
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let (p, a, _) = three_ports();
    let out = Command::new(BIN)
        .args([
            "demo",
            "--port",
            &p.to_string(),
            "--admin-port",
            &a.to_string(),
            "--iam-port",
            &port.to_string(),
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("--iam-port"),
        "{stderr}"
    );
    let out = Command::new(BIN)
        .args(["demo", "--port", "18080", "--admin-port", "18080"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn the_demo_config_passes_check() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml");
    let out = Command::new(BIN)
        .args(["check", "--config", &config.to_string_lossy()])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn shell_words_handle_the_quoting_the_demo_uses() {
    assert_eq!(
        shell_words(r#"curl -X PUT 'http://h/x' -H 'A: b c' --data '{"k":"it'\''s"}'"#),
        vec![
            "curl",
            "-X",
            "PUT",
            "http://h/x",
            "-H",
            "A: b c",
            "--data",
            r#"{"k":"it's"}"#
        ]
    );
    assert_eq!(
        shell_words(r#"a "b \" c" d\ e"#),
        vec!["a", "b \" c", "d e"]
    );
}
