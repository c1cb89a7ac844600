//! The client of the proxy tests: a small Python program inside the client namespace, driven over its stdin and
//! stdout (one JSON request, one JSON answer per line). The test process cannot open sockets in another
//! namespace itself (that takes `setns`, which the test crate has no binding for), and the client namespace's
//! hundreds of source addresses are only usable from inside it. One agent does one thing at a time; a test that
//! needs two things at once (a long read and new connections) starts two.

use crate::netns::Netns;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The longest any one request may take before the test gives up (only against hangs: requests carry their own
/// shorter socket timeouts).
const CALL_BOUND: Duration = Duration::from_secs(300);

/// The program (Python 3, standard library only).
const SCRIPT: &str = r##"
# The client side of the proxy end-to-end tests: runs inside the client namespace (`ip netns exec`), reads one
# JSON request per line on stdin and answers one JSON line on stdout. The Rust test drives it (agent.rs); the
# namespace's many client addresses (an AnyIP /24) are only usable from a process inside it, hence Python.
#
# Backends (backend.rs) greet every connection with their name and a newline, then echo; so the first line a
# client reads names the backend that the proxy chose.
import json
import socket
import sys

tcp = {}
udp = {}


def family(host):
    return socket.AF_INET6 if ':' in host else socket.AF_INET


def connect(r):
    s = socket.socket(family(r['dst']), socket.SOCK_STREAM)
    try:
        if r.get('src'):
            s.bind((r['src'], 0))
        s.settimeout(r.get('timeout', 30))
        s.connect((r['dst'], r['port']))
    except BaseException:
        s.close()
        raise
    return s


def first_line(s):
    """The backend's greeting (its name), or (None, how the connection ended) if it ends or stalls first."""
    buf = b''
    try:
        while not buf.endswith(b'\n'):
            chunk = s.recv(1)
            if not chunk:
                return None, 'eof'
            buf += chunk
    except ConnectionResetError:
        return None, 'reset'
    except TimeoutError:
        return None, 'timeout'
    return buf[:-1].decode(), None


def until_end(s, timeout):
    """Reads until the connection ends: ('eof' | 'reset' | 'timeout', bytes read, the last bytes)."""
    s.settimeout(timeout)
    n, tail = 0, b''
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return 'eof', n, tail
            n += len(chunk)
            tail = (tail + chunk)[-64:]
    except ConnectionResetError:
        return 'reset', n, tail
    except TimeoutError:
        return 'timeout', n, tail


def op_conns(r):
    """One short connection per entry of `srcs` (None: the default source), one after the other."""
    out = []
    for src in r['srcs']:
        try:
            s = connect(dict(r, src=src))
        except ConnectionResetError:
            # Reset by the proxy before connect() returned: refused like a reset after it.
            out.append({'backend': None, 'end': 'reset'})
            continue
        except OSError as e:
            out.append({'backend': None, 'end': 'connect: %s' % e})
            continue
        with s:
            name, end = first_line(s)
            if name is not None:
                try:
                    s.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                end, _, _ = until_end(s, r.get('timeout', 30))
            out.append({'backend': name, 'end': end})
    return {'results': out}


def op_open(r):
    """A connection kept under `key` once its backend greeted it."""
    try:
        s = connect(r)
    except ConnectionResetError:
        return {'backend': None, 'end': 'reset'}
    except OSError as e:
        return {'backend': None, 'end': 'connect: %s' % e}
    name, end = first_line(s)
    if name is None:
        s.close()
        return {'backend': None, 'end': end}
    tcp[r['key']] = s
    return {'backend': name, 'end': None}


def op_send(r):
    tcp[r['key']].sendall(r['data'].encode())
    return {}


def op_echo(r):
    """Sends `data` on a kept connection and reads it back (the backend echoes)."""
    s = tcp[r['key']]
    data = r['data'].encode()
    s.settimeout(r.get('timeout', 30))
    try:
        s.sendall(data)
        got = b''
        while len(got) < len(data):
            chunk = s.recv(len(data) - len(got))
            if not chunk:
                return {'echo': None, 'end': 'eof'}
            got += chunk
    except (ConnectionResetError, BrokenPipeError):
        return {'echo': None, 'end': 'reset'}
    except TimeoutError:
        return {'echo': None, 'end': 'timeout'}
    return {'echo': got.decode(), 'end': None}


def op_wait_end(r):
    s = tcp.pop(r['key'])
    with s:
        end, n, tail = until_end(s, r['timeout'])
    return {'end': end, 'bytes': n, 'tail': tail.decode('latin-1')}


def op_shutdown(r):
    """Half-closes a kept connection (no more data from the client; it still reads)."""
    tcp[r['key']].shutdown(socket.SHUT_WR)
    return {}


def op_close(r):
    s = tcp.pop(r['key'], None)
    if s is not None:
        s.close()
    return {}


def op_udp(r):
    """Sends `data` from the socket kept under `key` (made on first use: same source address and port after)
    and waits for the reply that carries it back."""
    s = udp.get(r['key'])
    if s is None:
        s = socket.socket(family(r['dst']), socket.SOCK_DGRAM)
        s.bind((r.get('src') or '', 0))
        udp[r['key']] = s
    s.settimeout(r.get('timeout', 5))
    data = r['data']
    s.sendto(data.encode(), (r['dst'], r['port']))
    try:
        while True:
            reply, frm = s.recvfrom(65535)
            text = reply.decode()
            # A late reply to an earlier, timed-out datagram is not this one's.
            if text.endswith(' ' + data):
                return {'reply': text, 'from': '%s:%d' % frm[:2], 'local': '%s:%d' % s.getsockname()[:2]}
    except TimeoutError:
        return {'reply': None}


OPS = {
    'conns': op_conns,
    'open': op_open,
    'send': op_send,
    'echo': op_echo,
    'wait_end': op_wait_end,
    'shutdown': op_shutdown,
    'close': op_close,
    'udp': op_udp,
}

for line in sys.stdin:
    req = json.loads(line)
    try:
        res = OPS[req['op']](req)
    except Exception as e:  # a mistake of the test, not an outcome: the Rust side panics with it
        res = {'error': '%s: %s' % (type(e).__name__, e)}
    print(json.dumps(res), flush=True)
"##;

/// How one short connection went: the backend that greeted it (if one did) and how it ended (`eof`, `reset`,
/// `timeout`, or `connect: <error>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub backend: Option<String>,
    pub end: Option<String>,
}

impl Outcome {
    fn from_json(v: &Value) -> Outcome {
        Outcome { backend: v["backend"].as_str().map(str::to_string), end: v["end"].as_str().map(str::to_string) }
    }
}

/// A running client agent; killed when dropped.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    log: std::path::PathBuf,
    _ns: Netns,
}

impl Agent {
    /// Starts an agent in `ns`; its program and its stderr go to `dir`.
    pub fn spawn(ns: &Netns, dir: &Path) -> Agent {
        let script = dir.join("proxy-client-agent.py");
        std::fs::write(&script, SCRIPT).expect("write the client agent");
        let log = dir.join("proxy-client-agent.log");
        let stderr = std::fs::File::options().create(true).append(true).open(&log).expect("agent log");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "/usr/bin/python3", "-u"])
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the client agent");
        let stdin = child.stdin.take().expect("agent stdin");
        let stdout = BufReader::new(child.stdout.take().expect("agent stdout")).lines();
        Agent { child, stdin, stdout, log, _ns: ns.clone() }
    }

    /// Sends one request and returns its answer; panics if the agent fails, hangs, or reports a mistake.
    pub async fn call(&mut self, request: Value) -> Value {
        let line = format!("{request}\n");
        let exchange = async {
            self.stdin.write_all(line.as_bytes()).await.expect("write to the client agent");
            self.stdin.flush().await.expect("flush the client agent");
            self.stdout.next_line().await.expect("read from the client agent")
        };
        let answer = match tokio::time::timeout(CALL_BOUND, exchange).await {
            Ok(Some(answer)) => answer,
            Ok(None) => panic!(
                "the client agent exited ({:?}) during {request}; its log:\n{}",
                self.child.try_wait(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            ),
            Err(_) => panic!("the client agent did not answer {request} within {CALL_BOUND:?}"),
        };
        let value: Value = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("agent answer {answer:?}: {e}"));
        assert!(value.get("error").is_none(), "the client agent failed {request}: {value}");
        value
    }

    /// One short connection to `dst:port` per entry of `srcs` (`None`: the namespace's default source), one
    /// after the other: each reads the greeting, half-closes and reads to the end.
    pub async fn conns(&mut self, dst: &str, port: u16, srcs: &[Option<String>]) -> Vec<Outcome> {
        let v = self.call(json!({"op": "conns", "dst": dst, "port": port, "srcs": srcs})).await;
        v["results"].as_array().expect("results").iter().map(Outcome::from_json).collect()
    }

    /// The backends that served `n` short connections from `src`, in order; panics unless every one was served
    /// and ended cleanly.
    pub async fn backends(&mut self, dst: &str, port: u16, src: Option<&str>, n: usize) -> Vec<String> {
        let srcs = vec![src.map(str::to_string); n];
        served(self.conns(dst, port, &srcs).await)
    }

    /// The backend that served one short connection from each of `srcs`, in order.
    pub async fn backends_from(&mut self, dst: &str, port: u16, srcs: &[String]) -> Vec<String> {
        let srcs: Vec<Option<String>> = srcs.iter().cloned().map(Some).collect();
        served(self.conns(dst, port, &srcs).await)
    }

    /// Opens a connection kept under `key`; the outcome names its backend, or says how it ended at once.
    pub async fn open(&mut self, key: &str, dst: &str, port: u16, src: Option<&str>) -> Outcome {
        self.open_within(key, dst, port, src, Duration::from_secs(30)).await
    }

    /// [`Agent::open`], giving up (`end: timeout`) if neither a greeting nor the end came within `timeout`.
    pub async fn open_within(
        &mut self,
        key: &str,
        dst: &str,
        port: u16,
        src: Option<&str>,
        timeout: Duration,
    ) -> Outcome {
        let request = json!({"op": "open", "key": key, "dst": dst, "port": port, "src": src,
            "timeout": timeout.as_secs_f64()});
        Outcome::from_json(&self.call(request).await)
    }

    pub async fn send(&mut self, key: &str, data: &str) {
        self.call(json!({"op": "send", "key": key, "data": data})).await;
    }

    /// Sends `data` on a kept connection and reads the backend's echo; `Err` with how it ended otherwise.
    pub async fn echo(&mut self, key: &str, data: &str) -> Result<String, String> {
        let v = self.call(json!({"op": "echo", "key": key, "data": data})).await;
        match v["echo"].as_str() {
            Some(e) => Ok(e.to_string()),
            None => Err(v["end"].as_str().unwrap_or("?").to_string()),
        }
    }

    /// Reads a kept connection until it ends (or `timeout` passes): `(end, bytes, last bytes)`.
    pub async fn wait_end(&mut self, key: &str, timeout: Duration) -> (String, u64, String) {
        let v = self.call(json!({"op": "wait_end", "key": key, "timeout": timeout.as_secs_f64()})).await;
        (
            v["end"].as_str().expect("end").to_string(),
            v["bytes"].as_u64().expect("bytes"),
            v["tail"].as_str().expect("tail").to_string(),
        )
    }

    /// Half-closes a kept connection.
    pub async fn shutdown(&mut self, key: &str) {
        self.call(json!({"op": "shutdown", "key": key})).await;
    }

    pub async fn close(&mut self, key: &str) {
        self.call(json!({"op": "close", "key": key})).await;
    }

    /// Sends a datagram from the UDP socket kept under `key` (bound to `src` on first use) and returns the reply
    /// that echoes it and the address it came from, or `None` if none came within `timeout`.
    pub async fn udp(
        &mut self,
        key: &str,
        src: Option<&str>,
        dst: &str,
        port: u16,
        data: &str,
        timeout: Duration,
    ) -> Option<(String, String)> {
        let request = json!({"op": "udp", "key": key, "src": src, "dst": dst, "port": port, "data": data,
            "timeout": timeout.as_secs_f64()});
        let v = self.call(request).await;
        let reply = v["reply"].as_str()?.to_string();
        Some((reply, v["from"].as_str().expect("from").to_string()))
    }
}

/// The backends of outcomes that must all have been served and ended with a clean close.
#[track_caller]
pub fn served(outcomes: Vec<Outcome>) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| match (&o.backend, o.end.as_deref()) {
            (Some(b), Some("eof")) => b.clone(),
            _ => panic!("a connection was not served cleanly: {o:?} (all: {outcomes:?})"),
        })
        .collect()
}
