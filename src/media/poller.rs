//! Legacy UDP sockets read by one task per runtime worker instead of one task per socket.
//!
//! Read from a task of its own, every RTP packet on a call's socket costs: tokio's readiness
//! bookkeeping for that socket (for reads *and* writes: each send frees socket buffer space, which
//! the kernel reports to tokio's edge-triggered epoll as a new write event), a task wake and poll,
//! and a second `recvfrom` that returns `EAGAIN` so that tokio clears the readiness. At 50 packets
//! per second per call the socket almost never has a second packet queued, so none of that is
//! shared between packets.
//!
//! A [`Shard`] instead owns a private, level-triggered epoll instance holding its sockets for
//! reading only; that instance is the one file tokio watches (nested epoll). One wake reads every
//! socket that has something queued, one `recvfrom` per datagram and no `EAGAIN` round, and the
//! sockets are plain std sockets, unknown to tokio, so sends raise no events either. A socket with
//! a flood queued is read one datagram per pass (the level-triggered instance reports it again),
//! so it cannot starve the others.
//!
//! Sends stay on the sending task (`send_to` on the non-blocking socket).

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::task::JoinHandle;

/// Largest UDP datagram read from the legacy side; bigger RTP does not fit a QUIC datagram anyway.
pub const RECV_BUF: usize = 2048;

/// Ready sockets taken from the epoll instance per pass; a full pass lets other tasks run next.
const EVENTS: usize = 256;

/// Ready sockets whose items are prefetched together, then read one by one.
const CHUNK: usize = 16;

/// What a shard asks of an item before its socket is read, so that the handler finds the item's
/// state in the cache. At a few hundred calls, each call's state has left the cache by the time
/// its next packet comes; touched one pointer after the other, it costs a wait on memory per
/// pointer. Each level is asked one socket read (a system call, microseconds) before the next
/// needs it, so that it finds the one before it cached.
pub trait Prefetch {
    /// Starts loading the item's first line, the one cloning it touches (addresses only: no
    /// reads). Called for a chunk of up to 16 ready sockets at once.
    fn prefetch(&self) {}
    /// Starts loading what the item leads to, `level` 0 to 2 steps away: level 0 three socket
    /// reads ahead of the item's turn, level 1 two ahead, level 2 just before its own read.
    fn prefetch_deep(&self, _level: u8) {}
}

impl Prefetch for u32 {}

/// What a shard does with each datagram: `(item, socket, datagram, source)`.
pub trait Handler<T>: FnMut(&T, &UdpSocket, &mut [u8], SocketAddr) + Send + 'static {}
impl<T, F: FnMut(&T, &UdpSocket, &mut [u8], SocketAddr) + Send + 'static> Handler<T> for F {}

/// Shards of sockets, one task each; sockets are spread over them in turn.
pub struct Poller<T> {
    shards: Vec<Arc<Shard<T>>>,
    tasks: Vec<JoinHandle<()>>,
    next: AtomicUsize,
}

impl<T: Clone + Send + Sync + Prefetch + 'static> Poller<T> {
    /// `shards` tasks on the current runtime, each calling a handler made by `handler`.
    pub fn new<H: Handler<T>>(shards: usize, mut handler: impl FnMut() -> H) -> io::Result<Self> {
        let mut p = Poller {
            shards: Vec::new(),
            tasks: Vec::new(),
            next: AtomicUsize::new(0),
        };
        for _ in 0..shards.max(1) {
            let shard = Arc::new(Shard::new()?);
            p.tasks.push(tokio::spawn(shard.clone().run(handler())));
            p.shards.push(shard);
        }
        Ok(p)
    }

    /// Reads `sock` (non-blocking) until the returned registration is dropped.
    pub fn register(&self, sock: Arc<UdpSocket>, item: T) -> io::Result<Registration<T>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        self.shards[i].register(sock, item)
    }

    /// Passes that found at least one socket ready, over all shards (one wake each).
    pub fn passes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.passes.load(Ordering::Relaxed))
            .sum()
    }
}

impl<T> Drop for Poller<T> {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The epoll instance, for tokio's `AsyncFd`.
struct EpollFd(Epoll);

impl AsRawFd for EpollFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0 .0.as_raw_fd()
    }
}

/// One task's sockets.
pub struct Shard<T> {
    epoll: AsyncFd<EpollFd>,
    slots: Mutex<Slots<T>>,
    passes: AtomicU64,
}

struct Slots<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
}

/// A socket's place; `generation` tells a stale epoll event (for an earlier socket in the same
/// place) from a current one.
struct Slot<T> {
    generation: u32,
    entry: Option<(Arc<UdpSocket>, T)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn token(index: u32, generation: u32) -> u64 {
    (u64::from(index) << 32) | u64::from(generation)
}

impl<T: Clone + Send + Sync + Prefetch + 'static> Shard<T> {
    fn new() -> io::Result<Self> {
        let epoll = EpollFd(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?);
        // SAFETY: `EpollFd` owns its descriptor (an `OwnedFd`) and never replaces it, so the
        // descriptor stays open and the same for the whole life of the `AsyncFd` that owns it.
        let epoll = unsafe { AsyncFd::register_with_interest(epoll, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Shard {
            epoll,
            slots: Mutex::new(Slots {
                slots: Vec::new(),
                free: Vec::new(),
            }),
            passes: AtomicU64::new(0),
        })
    }

    fn register(self: &Arc<Self>, sock: Arc<UdpSocket>, item: T) -> io::Result<Registration<T>> {
        sock.set_nonblocking(true)?;
        let mut s = lock(&self.slots);
        let index = match s.free.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(s.slots.len())
                    .map_err(|_| io::Error::other("too many sockets in one poller shard"))?;
                s.slots.push(Slot {
                    generation: 0,
                    entry: None,
                });
                i
            }
        };
        let slot = &mut s.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        let t = token(index, slot.generation);
        // Level-triggered: a socket with more queued is reported again on the next pass.
        if let Err(e) = self
            .epoll
            .get_ref()
            .0
            .add(&*sock, EpollEvent::new(EpollFlags::EPOLLIN, t))
        {
            s.free.push(index);
            return Err(e.into());
        }
        slot.entry = Some((sock.clone(), item));
        Ok(Registration {
            shard: self.clone(),
            token: t,
            fd: sock.as_raw_fd(),
            sock,
        })
    }

    /// The ready sockets of `events` with their items, prefetched: one lock for all of them.
    fn entries(&self, events: &[EpollEvent], out: &mut Vec<(u64, Arc<UdpSocket>, T)>) {
        let s = lock(&self.slots);
        let get = |t: u64| {
            let slot = s.slots.get((t >> 32) as usize)?;
            if token((t >> 32) as u32, slot.generation) != t {
                return None;
            }
            slot.entry.as_ref()
        };
        for ev in events {
            if let Some((sock, item)) = get(ev.data()) {
                super::prefetch(Arc::as_ptr(sock).cast(), 1);
                item.prefetch();
            }
        }
        out.extend(
            events
                .iter()
                .filter_map(|ev| get(ev.data()).map(|(s, i)| (ev.data(), s.clone(), i.clone()))),
        );
    }

    fn deregister(&self, t: u64, sock: &UdpSocket) {
        // Before the slot is freed, so that no event for the old socket names its successor.
        let _ = self.epoll.get_ref().0.delete(sock);
        let mut s = lock(&self.slots);
        let index = (t >> 32) as u32;
        if let Some(slot) = s.slots.get_mut(index as usize) {
            if token(index, slot.generation) == t && slot.entry.take().is_some() {
                s.free.push(index);
            }
        }
    }

    async fn run(self: Arc<Self>, mut handler: impl Handler<T>) {
        let mut buf = vec![0u8; RECV_BUF];
        let mut events = vec![EpollEvent::empty(); EVENTS];
        let mut ready = Vec::with_capacity(CHUNK);
        loop {
            let mut guard = match self.epoll.readable().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(error = %e, "legacy media poller failed: sockets are no longer read");
                    return;
                }
            };
            let n = match self.epoll.get_ref().0.wait(&mut events, EpollTimeout::ZERO) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "legacy media poller failed: sockets are no longer read");
                    return;
                }
            };
            if n == 0 {
                // Nothing left: wait for the instance to report a socket again.
                guard.clear_ready();
                continue;
            }
            drop(guard);
            self.passes.fetch_add(1, Ordering::Relaxed);
            for chunk in events[..n].chunks(CHUNK) {
                self.entries(chunk, &mut ready);
                // The first socket has no read ahead of it to hide behind: it is handled cold.
                // The second gets its levels one step late.
                if let Some((_, _, item)) = ready.get(1) {
                    item.prefetch_deep(0);
                }
                for i in 0..ready.len() {
                    for (ahead, level) in [(2, 0), (1, 1), (0, 2)] {
                        if i + ahead == 0 {
                            continue;
                        }
                        if let Some((_, _, item)) = ready.get(i + ahead) {
                            item.prefetch_deep(level);
                        }
                    }
                    let (t, sock, item) = &ready[i];
                    match sock.recv_from(&mut buf) {
                        Ok((len, src)) => handler(item, sock, &mut buf[..len], src),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        // ICMP port unreachable from an earlier send surfaces here on some
                        // platforms; the socket itself is fine.
                        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "legacy media socket failed: no longer read");
                            self.deregister(*t, sock);
                        }
                    }
                }
                ready.clear();
            }
            if n == EVENTS {
                // Possibly more ready than one pass takes: let the other tasks (quinn's drivers,
                // the QUIC flush tasks) run first.
                tokio::task::yield_now().await;
            }
        }
    }
}

/// A socket's membership in a shard: dropping it stops the reading (the socket itself closes once
/// its last `Arc` is gone).
pub struct Registration<T: Clone + Send + Sync + Prefetch + 'static> {
    shard: Arc<Shard<T>>,
    token: u64,
    /// `sock`'s descriptor, held here too: sending through it does not touch the socket's own
    /// allocation (one cache miss fewer per packet on a cold call).
    fd: RawFd,
    sock: Arc<UdpSocket>,
}

impl<T: Clone + Send + Sync + Prefetch + 'static> Registration<T> {
    /// The registered socket (for sending from it).
    pub fn socket(&self) -> &Arc<UdpSocket> {
        &self.sock
    }

    /// The registered socket's descriptor, to send from it.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: `fd` is `sock`'s descriptor, and `sock` stays open as long as `self` holds it,
        // which outlives the returned borrow.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) }
    }
}

impl<T: Clone + Send + Sync + Prefetch + 'static> Drop for Registration<T> {
    fn drop(&mut self) {
        self.shard.deregister(self.token, &self.sock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::mpsc;

    fn bound() -> Arc<UdpSocket> {
        Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap())
    }

    /// A poller whose handler reports `(item, payload)`.
    fn poller(shards: usize) -> (Poller<u32>, mpsc::UnboundedReceiver<(u32, Vec<u8>)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let p = Poller::new(shards, || {
            let tx = tx.clone();
            move |item: &u32, _: &UdpSocket, d: &mut [u8], _: SocketAddr| {
                let _ = tx.send((*item, d.to_vec()));
            }
        })
        .unwrap();
        (p, rx)
    }

    async fn take(
        rx: &mut mpsc::UnboundedReceiver<(u32, Vec<u8>)>,
        n: usize,
    ) -> Vec<(u32, Vec<u8>)> {
        let mut got = Vec::new();
        while got.len() < n {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some(x)) => got.push(x),
                _ => panic!("only {} of {n} datagrams read: {got:?}", got.len()),
            }
        }
        got
    }

    #[tokio::test]
    async fn one_wake_reads_every_socket_with_something_queued() {
        let (p, mut rx) = poller(1);
        let socks: Vec<_> = (0..20).map(|_| bound()).collect();
        let regs: Vec<_> = socks
            .iter()
            .enumerate()
            .map(|(i, s)| p.register(s.clone(), i as u32).unwrap())
            .collect();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        // All queued before the shard task runs (this test's runtime has one thread).
        for (i, s) in socks.iter().enumerate() {
            tx.send_to(&[i as u8], s.local_addr().unwrap()).unwrap();
        }
        let mut got = take(&mut rx, 20).await;
        got.sort();
        assert_eq!(got, (0..20).map(|i| (i, vec![i as u8])).collect::<Vec<_>>());
        assert_eq!(p.passes(), 1, "20 sockets took {} passes", p.passes());
        drop(regs);
    }

    #[tokio::test]
    async fn a_flooded_socket_does_not_hold_up_the_others() {
        let (p, mut rx) = poller(1);
        let (flooded, quiet) = (bound(), bound());
        let _r1 = p.register(flooded.clone(), 1).unwrap();
        let _r2 = p.register(quiet.clone(), 2).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..100u8 {
            tx.send_to(&[i], flooded.local_addr().unwrap()).unwrap();
        }
        tx.send_to(b"q", quiet.local_addr().unwrap()).unwrap();
        let got = take(&mut rx, 101).await;
        let quiet_at = got.iter().position(|(i, _)| *i == 2).unwrap();
        assert!(
            quiet_at <= 1,
            "the quiet socket was read after {quiet_at} flood datagrams"
        );
        // The flood itself arrives whole and in order.
        let flood: Vec<u8> = got
            .iter()
            .filter(|(i, _)| *i == 1)
            .map(|(_, d)| d[0])
            .collect();
        assert_eq!(flood, (0..100).collect::<Vec<u8>>());
    }

    #[tokio::test]
    async fn a_dropped_registration_stops_reading_and_frees_the_port() {
        let (p, mut rx) = poller(2);
        let s = bound();
        let addr = s.local_addr().unwrap();
        let reg = p.register(s.clone(), 7).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"a", addr).unwrap();
        assert_eq!(take(&mut rx, 1).await, vec![(7, b"a".to_vec())]);
        drop(reg);
        tx.send_to(b"b", addr).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            rx.try_recv().is_err(),
            "read after its registration was dropped"
        );
        drop(s);
        // The place is reused by a new socket on the same port; the old token must not name it.
        let again = Arc::new(UdpSocket::bind(addr).expect("port still held after deregistration"));
        let _reg = p.register(again, 8).unwrap();
        tx.send_to(b"c", addr).unwrap();
        assert_eq!(take(&mut rx, 1).await, vec![(8, b"c".to_vec())]);
    }

    #[tokio::test]
    async fn dropping_the_poller_stops_its_tasks() {
        let (p, mut rx) = poller(3);
        let s = bound();
        let reg = p.register(s.clone(), 1).unwrap();
        drop(p);
        tokio::task::yield_now().await;
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .send_to(b"x", s.local_addr().unwrap())
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(rx.try_recv().is_err());
        drop(reg);
    }
}
