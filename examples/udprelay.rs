//! The cheapest relay of RTP-sized UDP a process can be: the floor under the relay CPU figures of
//! `interop/bench/compare.sh` (`interop/bench/floor.sh` runs it).
//!
//! ```text
//! udprelay relay --calls N [--base 30000] [--peer-base 40000] [--warm S] [--secs S]
//! udprelay gen   --calls N [--base 30000] [--peer-base 40000] [--secs S]
//! ```
//!
//! - `relay` binds `--calls` UDP sockets on 127.0.0.1 from `--base` up, and on one thread does
//!   what every relay on kernel sockets must do per packet and nothing else: a level-triggered
//!   epoll wait, one `recv`, one `sendto` back to the generator's socket of the same index
//!   (`--peer-base` + i). No parsing, no crypto, no second hop. After `--warm` seconds it
//!   measures its own CPU (utime + stime from `/proc/self/stat`) for `--secs` seconds and prints
//!   `relay calls=N cpu_us=… packets=… us_per_packet=…`.
//! - `gen` binds the generator's sockets (`--peer-base` + i) and sends one 172-byte packet (RTP
//!   header + 160 bytes of G.711, 20 ms) per socket per 20 ms to the relay, spread over twenty
//!   1 ms steps, for `--secs` seconds; it reads what comes back and prints
//!   `gen calls=N sent=… received=…`.
//!
//! A relay that also parses, protects and forwards over a second hop can only cost more per
//! packet than this; what a real relay adds is its cost above this floor, measured in the same
//! minutes on the same machine.

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

struct Args {
    calls: u16,
    base: u16,
    peer_base: u16,
    warm: u64,
    secs: u64,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        calls: 0,
        base: 30000,
        peer_base: 40000,
        warm: 5,
        secs: 20,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |what: &str| {
            value
                .parse::<u64>()
                .map_err(|_| format!("{what} must be a whole number, got {value:?}"))
        };
        let port = |what: &str| {
            value
                .parse::<u16>()
                .map_err(|_| format!("{what} must be a port (0-65535), got {value:?}"))
        };
        match flag.as_str() {
            "--calls" => a.calls = port("--calls")?,
            "--base" => a.base = port("--base")?,
            "--peer-base" => a.peer_base = port("--peer-base")?,
            "--warm" => a.warm = num("--warm")?,
            "--secs" => a.secs = num("--secs")?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    if a.calls == 0 {
        return Err("--calls must be at least 1".into());
    }
    for (what, base) in [("--base", a.base), ("--peer-base", a.peer_base)] {
        if base.checked_add(a.calls).is_none() {
            return Err(format!(
                "{what} {base} + {} calls passes port 65535",
                a.calls
            ));
        }
    }
    Ok(a)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// One non-blocking socket per call, bound from `base` up, in a level-triggered epoll instance
/// whose events carry the socket's index.
fn sockets(base: u16, calls: u16) -> Result<(Vec<UdpSocket>, Epoll), String> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| format!("epoll: {e}"))?;
    let mut socks = Vec::with_capacity(calls.into());
    for i in 0..calls {
        let s =
            UdpSocket::bind(addr(base + i)).map_err(|e| format!("bind port {}: {e}", base + i))?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        epoll
            .add(&s, EpollEvent::new(EpollFlags::EPOLLIN, u64::from(i)))
            .map_err(|e| format!("epoll add: {e}"))?;
        socks.push(s);
    }
    Ok((socks, epoll))
}

/// utime + stime of this process, in microseconds.
fn cpu_us() -> Result<u64, String> {
    let stat =
        std::fs::read_to_string("/proc/self/stat").map_err(|e| format!("/proc/self/stat: {e}"))?;
    // After "comm) " the fields start at field 3: utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(") ").ok_or("odd /proc/self/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or("odd /proc/self/stat")
    };
    // USER_HZ is 100 on every Linux this runs on (the kernel ABI fixes it for /proc).
    Ok((ticks(11)? + ticks(12)?) * 10_000)
}

fn relay(a: &Args) -> Result<(), String> {
    let (socks, epoll) = sockets(a.base, a.calls)?;
    let peers: Vec<SocketAddr> = (0..a.calls).map(|i| addr(a.peer_base + i)).collect();
    let mut events = vec![EpollEvent::empty(); 256];
    let mut buf = [0u8; 2048];
    let mut packets = 0u64;
    let start = Instant::now();
    let (warm, end) = (
        Duration::from_secs(a.warm),
        Duration::from_secs(a.warm + a.secs),
    );
    let mut measured: Option<(u64, u64)> = None;
    loop {
        let n = match epoll.wait(&mut events, EpollTimeout::from(100u16)) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(format!("epoll wait: {e}")),
        };
        for ev in &events[..n] {
            let i = ev.data() as usize;
            if let Ok(len) = socks[i].recv(&mut buf) {
                if socks[i].send_to(&buf[..len], peers[i]).is_ok() {
                    packets += 1;
                }
            }
        }
        let t = start.elapsed();
        match measured {
            None if t >= warm => measured = Some((cpu_us()?, packets)),
            Some((c0, p0)) if t >= end => {
                let (cpu, p) = (cpu_us()? - c0, packets - p0);
                println!(
                    "relay calls={} cpu_us={cpu} packets={p} us_per_packet={:.2}",
                    a.calls,
                    cpu as f64 / p.max(1) as f64
                );
                return Ok(());
            }
            _ => {}
        }
    }
}

fn generate(a: &Args) -> Result<(), String> {
    let (socks, epoll) = sockets(a.peer_base, a.calls)?;
    let mut pkt = [0u8; 172];
    pkt[0] = 0x80;
    let mut events = vec![EpollEvent::empty(); 256];
    let mut buf = [0u8; 2048];
    let (mut sent, mut received) = (0u64, 0u64);
    const STEPS: usize = 20;
    let step = Duration::from_millis(20) / STEPS as u32;
    let start = Instant::now();
    let end = start + Duration::from_secs(a.secs);
    let (mut next, mut k) = (start, 0usize);
    let calls = usize::from(a.calls);
    while Instant::now() < end {
        if Instant::now() >= next {
            let (lo, hi) = (k * calls / STEPS, (k + 1) * calls / STEPS);
            for (i, s) in socks.iter().enumerate().take(hi).skip(lo) {
                if s.send_to(&pkt, addr(a.base + i as u16)).is_ok() {
                    sent += 1;
                }
            }
            k = (k + 1) % STEPS;
            next += step;
        }
        let wait = next.saturating_duration_since(Instant::now()).as_millis();
        let n = epoll
            .wait(&mut events, EpollTimeout::from(wait.min(100) as u16))
            .unwrap_or(0);
        for ev in &events[..n] {
            while socks[ev.data() as usize].recv(&mut buf).is_ok() {
                received += 1;
            }
        }
    }
    println!("gen calls={} sent={sent} received={received}", a.calls);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run = match args.first().map(String::as_str) {
        Some("relay") => parse(&args[1..]).and_then(|a| relay(&a)),
        Some("gen") => parse(&args[1..]).and_then(|a| generate(&a)),
        _ => Err(
            "usage: udprelay relay|gen --calls N [--base P] [--peer-base P] [--warm S] [--secs S]"
                .into(),
        ),
    };
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udprelay: {e}");
            ExitCode::FAILURE
        }
    }
}
