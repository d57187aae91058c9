//! HTTP/1.1 load generator for the keyward benchmark (loopback only, bounded in time).
//!
//! Two modes, one keep-alive connection per thread, one request in flight per connection:
//! - closed loop (`--rate 0`): every connection sends its next request as soon as the previous
//!   response arrived; gives throughput (req/s).
//! - fixed rate (`--rate R`): R requests per second in total, spread evenly over the
//!   connections (wrk2-style). Latency is corrected for coordinated omission: when a request
//!   could not be sent at its scheduled time because the previous response on its connection was
//!   late, its latency is counted from the scheduled time. Oversleeping by the client itself is
//!   not counted.
//!
//! Usage:
//!   loadgen --addr 127.0.0.1:PORT [--path /x] [--auth-file F] [--connections 8]
//!           [--duration 5] [--rate 0] [--expect 200] [--timeout 2]
//!           [--method GET] [--body TEXT]
//! `--auth-file`: one `Authorization` header value per line; requests cycle through them (each
//! connection starts at a different offset). `--body`: sent with `content-type:
//! application/json` and its `content-length` (e.g. `--method POST --body '{"model":…}'`).
//! Prints one JSON object on stdout.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_bench_loadgen::read_message;

struct Args {
    addr: SocketAddr,
    method: String,
    path: String,
    body: Option<String>,
    auth: Vec<String>,
    connections: usize,
    duration: Duration,
    rate: f64,
    expect: u16,
    timeout: Duration,
}

#[derive(Default)]
struct Stats {
    latencies_ns: Vec<u64>,
    service_ns: Vec<u64>,
    status: Vec<(u16, u64)>,
    errors: u64,
    reconnects: u64,
    late: u64,
    first_error: Option<String>,
}

impl Stats {
    fn count_status(&mut self, s: u16) {
        match self.status.iter_mut().find(|(k, _)| *k == s) {
            Some((_, n)) => *n += 1,
            None => self.status.push((s, 1)),
        }
    }
    fn error(&mut self, e: &io::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("loadgen: {e}");
        std::process::exit(2);
    });
    let args = Arc::new(args);
    let start = Instant::now() + Duration::from_millis(20);
    let handles: Vec<_> = (0..args.connections)
        .map(|c| {
            let args = Arc::clone(&args);
            std::thread::spawn(move || worker(&args, c, start))
        })
        .collect();
    let mut total = Stats::default();
    for h in handles {
        let s = h.join().unwrap_or_default();
        total.latencies_ns.extend(s.latencies_ns);
        total.service_ns.extend(s.service_ns);
        for (k, n) in s.status {
            match total.status.iter_mut().find(|(kk, _)| *kk == k) {
                Some((_, m)) => *m += n,
                None => total.status.push((k, n)),
            }
        }
        total.errors += s.errors;
        total.reconnects += s.reconnects;
        total.late += s.late;
        if total.first_error.is_none() {
            total.first_error = s.first_error;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    print_report(&args, &mut total, elapsed);
}

fn parse_args() -> Result<Args, String> {
    let mut addr = None;
    let mut path = "/".to_string();
    let mut method = "GET".to_string();
    let mut body = None;
    let mut auth_file = None;
    let mut connections = 8usize;
    let mut duration = 5.0f64;
    let mut rate = 0.0f64;
    let mut expect = 200u16;
    let mut timeout = 2.0f64;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--addr" => {
                addr = Some(
                    value
                        .parse::<SocketAddr>()
                        .map_err(|e| format!("--addr: {e}"))?,
                )
            }
            "--path" => path = value,
            "--method" => method = value,
            "--body" => body = Some(value),
            "--auth-file" => auth_file = Some(value),
            "--connections" => connections = num(&value)? as usize,
            "--duration" => duration = num(&value)?,
            "--rate" => rate = num(&value)?,
            "--expect" => expect = num(&value)? as u16,
            "--timeout" => timeout = num(&value)?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let addr = addr.ok_or("--addr is required")?;
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("--method must be an upper-case token such as GET or POST".into());
    }
    if !addr.ip().is_loopback() {
        return Err("--addr: loopback addresses only".into());
    }
    if !(1..=256).contains(&connections) {
        return Err("--connections must be 1..=256".into());
    }
    if !(duration > 0.0 && duration <= 600.0) {
        return Err("--duration must be in (0, 600] seconds".into());
    }
    if !(0.0..=1_000_000.0).contains(&rate) {
        return Err("--rate must be 0 (closed loop) or up to 1e6".into());
    }
    if !(timeout > 0.0 && timeout <= 60.0) {
        return Err("--timeout must be in (0, 60] seconds".into());
    }
    let auth = match auth_file {
        None => Vec::new(),
        Some(f) => std::fs::read_to_string(&f)
            .map_err(|e| format!("{f}: {e}"))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
    };
    Ok(Args {
        addr,
        method,
        path,
        body,
        auth,
        connections,
        duration: Duration::from_secs_f64(duration),
        rate,
        expect,
        timeout: Duration::from_secs_f64(timeout),
    })
}

fn build_requests(args: &Args) -> Vec<Vec<u8>> {
    let base = |auth: Option<&str>| {
        let mut r = format!(
            "{} {} HTTP/1.1\r\nhost: bench.local\r\nuser-agent: keyward-bench\r\n",
            args.method, args.path
        );
        if let Some(a) = auth {
            r.push_str("authorization: ");
            r.push_str(a);
            r.push_str("\r\n");
        }
        if let Some(body) = &args.body {
            r.push_str("content-type: application/json\r\n");
            r.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        r.push_str("\r\n");
        if let Some(body) = &args.body {
            r.push_str(body);
        }
        r.into_bytes()
    };
    if args.auth.is_empty() {
        vec![base(None)]
    } else {
        args.auth.iter().map(|a| base(Some(a))).collect()
    }
}

fn connect(args: &Args) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&args.addr, args.timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(args.timeout))?;
    s.set_write_timeout(Some(args.timeout))?;
    Ok(s)
}

fn worker(args: &Args, index: usize, start: Instant) -> Stats {
    let requests = build_requests(args);
    let mut next_req = (index * requests.len()) / args.connections;
    let mut stats = Stats::default();
    let deadline = start + args.duration;
    let fixed = args.rate > 0.0;
    // fixed rate: this connection's share of the schedule
    let interval = if fixed {
        Duration::from_secs_f64(args.connections as f64 / args.rate)
    } else {
        Duration::ZERO
    };
    let phase = if fixed {
        Duration::from_secs_f64(index as f64 / args.rate)
    } else {
        Duration::ZERO
    };
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut prev_done = start;
    let mut k: u32 = 0;
    let now = Instant::now();
    if start > now {
        std::thread::sleep(start - now);
    }
    loop {
        let intended = if fixed {
            start + phase + interval * k
        } else {
            Instant::now()
        };
        if intended >= deadline || Instant::now() >= deadline {
            break;
        }
        k = k.saturating_add(1);
        if fixed {
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
        }
        let stream = match conn.as_mut() {
            Some(s) => s,
            None => match connect(args) {
                Ok(s) => {
                    buf.clear();
                    conn.insert(s)
                }
                Err(e) => {
                    stats.error(&e);
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        let req = &requests[next_req % requests.len()];
        next_req = next_req.wrapping_add(1);
        let sent = Instant::now();
        let result = stream
            .write_all(req)
            .and_then(|()| read_message(stream, &mut buf, true));
        let done = Instant::now();
        match result {
            Ok(Some(head)) => {
                stats.count_status(head.status);
                // late because the previous response was late: count from the schedule
                let from = if fixed && prev_done > intended {
                    stats.late += 1;
                    intended
                } else {
                    sent
                };
                stats.latencies_ns.push((done - from).as_nanos() as u64);
                stats.service_ns.push((done - sent).as_nanos() as u64);
                if head.close {
                    conn = None;
                    stats.reconnects += 1;
                }
            }
            Ok(None) => {
                stats.error(&io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a response",
                ));
                conn = None;
            }
            Err(e) => {
                stats.error(&e);
                conn = None;
            }
        }
        prev_done = done;
    }
    stats
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

fn print_report(args: &Args, s: &mut Stats, elapsed: f64) {
    s.latencies_ns.sort_unstable();
    s.service_ns.sort_unstable();
    s.status.sort_unstable();
    let completed: u64 = s.status.iter().map(|(_, n)| n).sum();
    let expected: u64 = s
        .status
        .iter()
        .filter(|(k, _)| *k == args.expect)
        .map(|(_, n)| n)
        .sum();
    let mean = if s.latencies_ns.is_empty() {
        0.0
    } else {
        s.latencies_ns.iter().sum::<u64>() as f64 / s.latencies_ns.len() as f64 / 1000.0
    };
    let status: Vec<String> = s
        .status
        .iter()
        .map(|(k, n)| format!("\"{k}\":{n}"))
        .collect();
    let lat = &s.latencies_ns;
    let svc = &s.service_ns;
    let first_error = s
        .first_error
        .as_deref()
        .unwrap_or("")
        .replace(['"', '\\'], "'");
    let out = format!(
        concat!(
            "{{\"mode\":\"{}\",\"connections\":{},\"rate\":{},\"duration_s\":{},\"elapsed_s\":{:.4},",
            "\"requests\":{},\"expected\":{},\"unexpected\":{},\"errors\":{},\"reconnects\":{},\"late\":{},",
            "\"status\":{{{}}},\"rps\":{:.1},",
            "\"latency_us\":{{\"mean\":{:.1},\"p50\":{:.1},\"p90\":{:.1},\"p99\":{:.1},\"p999\":{:.1},\"max\":{:.1}}},",
            "\"service_us\":{{\"p50\":{:.1},\"p99\":{:.1}}},\"first_error\":\"{}\"}}"
        ),
        if args.rate > 0.0 { "fixed_rate" } else { "closed_loop" },
        args.connections,
        args.rate,
        args.duration.as_secs_f64(),
        elapsed,
        completed,
        expected,
        completed - expected,
        s.errors,
        s.reconnects,
        s.late,
        status.join(","),
        completed as f64 / elapsed.max(1e-9),
        mean,
        percentile(lat, 0.50),
        percentile(lat, 0.90),
        percentile(lat, 0.99),
        percentile(lat, 0.999),
        percentile(lat, 1.0),
        percentile(svc, 0.50),
        percentile(svc, 0.99),
        first_error,
    );
    println!("{out}");
}
