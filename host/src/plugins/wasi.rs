//! The WASI a pricing plugin sees (SPEC §2): inert and deterministic.
//!
//! - **Clocks**: the wall clock always says [`FIXED_TIME`]; the monotonic
//!   clock is *virtual*: it starts at zero, advances by [`NOW_TICK_NS`] per
//!   reading and jumps forward when the plugin waits. When a plugin waits on
//!   clock subscriptions (`subscribe-duration`, `subscribe-instant`, and so
//!   every `sleep` and every `poll` with a time-out) and nothing else it
//!   waits on is ready, the earliest subscription fires at once and the clock
//!   moves to it — so a plugin that sleeps holds no host time. A wait whose
//!   earliest end is past the deadline stops the run there
//!   ([`VirtualDeadline`]). The same plugin on the same cart always sees the
//!   same times: a run can be replayed.
//! - **Sockets**: linked with nothing behind them. Creating a TCP or UDP
//!   socket and looking up a name fail with `access-denied` before any OS
//!   resource exists (so no other socket operation is reachable); the first
//!   attempt of a run is noted in its log.
//! - **Files**: `wasi:filesystem` with no preopened directory.
//! - stdin is empty; stdout and stderr go to the run's capped log
//!   ([`RunLog`]), a stream that is always ready (no writer task, so no
//!   readiness that depends on scheduling); randomness is seeded from the
//!   plugin's digest, at most [`MAX_RANDOM_BYTES`] per call.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::bindings::io::poll;
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{self, ResolveAddressStream};
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, IpAddress, IpAddressFamily, Network};
use wasmtime_wasi::p2::bindings::sockets::{tcp_create_socket, udp_create_socket};
use wasmtime_wasi::p2::{
    DynPollable, OutputStream, Pollable, SocketError, SocketResult, StreamResult, TcpSocket, UdpSocket,
    subscribe,
};
use wasmtime_wasi::sockets::WasiSocketsCtxView;
use wasmtime_wasi::{HostWallClock, WasiCtx, WasiCtxBuilder};

use super::limits::LOG_BYTES;
use super::sandbox::PluginCtx;

/// What every plugin's wall clock says: 2025-01-01T00:00:00Z, never advancing.
pub const FIXED_TIME: Duration = Duration::from_secs(1_735_689_600);

/// How far the virtual monotonic clock advances per reading: a busy-wait on
/// the clock ends after a bounded number of readings, the same on every run.
pub const NOW_TICK_NS: u64 = 1_000;

/// A plugin asked to wait past its deadline on its virtual clock.
#[derive(Debug, Clone, Copy)]
pub struct VirtualDeadline {
    /// How long the wait asked for, from the plugin's virtual now.
    pub asked_ns: u64,
}

impl std::fmt::Display for VirtualDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the plugin asked to wait {} ms, past its deadline", self.asked_ns / 1_000_000)
    }
}
impl std::error::Error for VirtualDeadline {}

/// Random bytes one call may ask for (wasmtime's default is 64 MiB, made
/// in the host in one uninterruptible call).
pub const MAX_RANDOM_BYTES: usize = 64 * 1024;

/// The virtual monotonic clock of one run, in nanoseconds since its start.
#[derive(Clone)]
pub struct VirtualClock(Arc<ClockState>);

struct ClockState {
    now: AtomicU64,
    /// Waits that would end past this stop the run (the run's deadline).
    limit_ns: u64,
    /// Clock waits in progress, by (end, id): the earliest fires first.
    waiting: Mutex<std::collections::BTreeSet<(u64, u64)>>,
    next_id: AtomicU64,
    /// Set (with how long it asked for) when the plugin waits past the limit.
    overslept: Mutex<Option<u64>>,
    overslept_signal: tokio::sync::Notify,
    /// The end of each clock subscription the plugin holds, by its pollable's
    /// handle: a wait on these alone is decided at once.
    timers: Mutex<std::collections::HashMap<u32, u64>>,
}

impl VirtualClock {
    pub fn new(deadline: Duration) -> VirtualClock {
        VirtualClock(Arc::new(ClockState {
            now: AtomicU64::new(0),
            limit_ns: u64::try_from(deadline.as_nanos()).unwrap_or(u64::MAX),
            waiting: Mutex::new(std::collections::BTreeSet::new()),
            next_id: AtomicU64::new(0),
            overslept: Mutex::new(None),
            overslept_signal: tokio::sync::Notify::new(),
            timers: Mutex::new(std::collections::HashMap::new()),
        }))
    }

    /// Virtual time elapsed so far.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.now())
    }

    fn now(&self) -> u64 {
        self.0.now.load(Ordering::Relaxed)
    }

    /// Resolves when the plugin waits past its deadline on this clock.
    /// Every waiter wakes (the poll inside the guest's host call, which
    /// traps, and the run's own race), so the run ends by that trap — the
    /// guest unwinds as from any trap — rather than by dropping a suspended
    /// call, whose fiber would have to be unwound from outside (costly, and
    /// paid on every run of a plugin that sleeps).
    pub async fn overslept(&self) -> VirtualDeadline {
        loop {
            let notified = self.0.overslept_signal.notified();
            tokio::pin!(notified);
            // Registered before the check: a notification between the two is not missed.
            notified.as_mut().enable();
            if let Some(asked_ns) = *lock(&self.0.overslept) {
                return VirtualDeadline { asked_ns };
            }
            notified.await;
        }
    }

    fn subscribe(&self, table: &mut ResourceTable, at: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let timer = table.push(VirtualTimer { at, clock: self.clone() })?;
        let pollable = subscribe(table, timer)?;
        lock(&self.0.timers).insert(pollable.rep(), at);
        Ok(pollable)
    }

    /// A wait on `pollables` decided at once when every one is a clock
    /// subscription (a `sleep`, a `poll` with only time-outs): the indices
    /// of those that fire, the clock moved to the earliest end, or the
    /// deadline if that end is past it. `None` when something else is
    /// waited on (then the wait goes through the pollables' futures). No
    /// yield to the scheduler: what a busy host does between two polls
    /// cannot lengthen a plugin's sleep in host time, nor hold its run slot.
    fn wait_on_timers(&self, pollables: &[u32]) -> Option<Result<Vec<u32>, VirtualDeadline>> {
        let ends: Vec<u64> = {
            let timers = lock(&self.0.timers);
            pollables.iter().map(|p| timers.get(p).copied()).collect::<Option<_>>()?
        };
        let now = self.now();
        let earliest = ends.iter().copied().min()?;
        if earliest > now && earliest > self.0.limit_ns {
            *lock(&self.0.overslept) = Some(earliest - now);
            return Some(Err(VirtualDeadline { asked_ns: earliest - now }));
        }
        let until = self.0.now.fetch_max(earliest, Ordering::Relaxed).max(earliest);
        Some(Ok((0..ends.len() as u32).filter(|&i| ends[i as usize] <= until).collect()))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A clock subscription: ready once the virtual clock reaches `at`.
struct VirtualTimer {
    at: u64,
    clock: VirtualClock,
}

/// A wait on a [`VirtualTimer`] in progress (removed when the wait ends or
/// is given up).
struct Waiting<'a> {
    clock: &'a ClockState,
    key: (u64, u64),
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(&self.clock.waiting).remove(&self.key);
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for VirtualTimer {
    async fn ready(&mut self) {
        let state = &*self.clock.0;
        if state.now.load(Ordering::Relaxed) >= self.at {
            return;
        }
        let key = (self.at, state.next_id.fetch_add(1, Ordering::Relaxed));
        lock(&state.waiting).insert(key);
        let _waiting = Waiting { clock: state, key };
        loop {
            // Let every other pollable of the same `poll` be looked at (and
            // every other timer register) before time moves.
            tokio::task::yield_now().await;
            let now = state.now.load(Ordering::Relaxed);
            if now >= self.at {
                return;
            }
            let earliest = lock(&state.waiting).first().copied();
            if earliest == Some(key) {
                if self.at > state.limit_ns {
                    // The plugin waits past its deadline: the run ends here.
                    *lock(&state.overslept) = Some(self.at - now);
                    state.overslept_signal.notify_waiters();
                    std::future::pending::<()>().await;
                }
                state.now.fetch_max(self.at, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// The wall clock: always [`FIXED_TIME`].
struct FixedClock;

impl HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        FIXED_TIME
    }
}

/// stdout and stderr of a run, interleaved, capped at [`LOG_BYTES`]: writes
/// past the cap are accepted and dropped, so a chatty plugin never fails.
#[derive(Clone, Default)]
pub struct RunLog(Arc<Mutex<LogState>>);

#[derive(Default)]
struct LogState {
    bytes: Vec<u8>,
    truncated: bool,
    /// What the host noted about the run (denied capabilities), once each.
    notes: Vec<&'static str>,
}

impl RunLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The log as text: the host's notes first, then what the plugin wrote.
    pub fn text(&self) -> String {
        let guard = self.lock();
        let mut s = String::new();
        for note in &guard.notes {
            s.push_str("[mercato] ");
            s.push_str(note);
            s.push('\n');
        }
        s.push_str(&String::from_utf8_lossy(&guard.bytes));
        if guard.truncated {
            s.push_str("\n[log truncated]");
        }
        s
    }

    /// Note `what` once per run (kept apart from the plugin's own output, so
    /// a plugin that floods its log cannot hide it).
    pub fn note(&self, what: &'static str) {
        let mut guard = self.lock();
        if !guard.notes.contains(&what) {
            guard.notes.push(what);
        }
    }
}

impl IsTerminal for RunLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for RunLog {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    /// The log itself is the stream: always ready, no writer task.
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

/// Bytes a plugin may hand over per write (the log takes what fits and
/// drops the rest).
const WRITE_PERMIT: usize = 64 * 1024;

impl RunLog {
    fn append(&self, buf: &[u8]) {
        let mut guard = self.lock();
        let room = LOG_BYTES.saturating_sub(guard.bytes.len());
        let take = room.min(buf.len());
        guard.bytes.extend_from_slice(&buf[..take]);
        if take < buf.len() {
            guard.truncated = true;
        }
    }
}

impl OutputStream for RunLog {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for RunLog {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for RunLog {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Random bytes derived from the plugin's digest: the same plugin sees the
/// same "random" numbers on every run, so a run can be replayed.
pub fn seeded_bytes(digest: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 * 32);
    for i in 0u8..32 {
        out.extend_from_slice(&Sha256::new().chain_update(digest).chain_update([i]).finalize());
    }
    out
}

/// The WASI context of one run of the plugin `digest`.
pub fn inert_wasi(digest: &str, log: &RunLog) -> WasiCtx {
    let seed = seeded_bytes(digest);
    let mut seed128 = [0u8; 16];
    seed128.copy_from_slice(&seed[..16]);
    WasiCtxBuilder::new()
        .stdout(log.clone())
        .stderr(log.clone())
        .wall_clock(FixedClock)
        .secure_random(wasmtime_wasi::Deterministic::new(seed.clone()))
        .insecure_random(wasmtime_wasi::Deterministic::new(seed))
        .insecure_random_seed(u128::from_le_bytes(seed128))
        .max_random_size(MAX_RANDOM_BYTES as u64)
        .allow_ip_name_lookup(false)
        .allow_tcp(false)
        .allow_udp(false)
        .build()
}

/// Link WASI p2 for plugins: wasmtime's implementation, with the monotonic
/// clock and the three ways to reach the network replaced by ours.
pub fn add_to_linker(linker: &mut Linker<PluginCtx>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    linker.allow_shadowing(true);
    monotonic_clock::add_to_linker::<PluginCtx, Plugin>(linker, PluginCtx::view)?;
    poll::add_to_linker::<PluginCtx, Plugin>(linker, PluginCtx::view)?;
    tcp_create_socket::add_to_linker::<PluginCtx, Plugin>(linker, PluginCtx::view)?;
    udp_create_socket::add_to_linker::<PluginCtx, Plugin>(linker, PluginCtx::view)?;
    ip_name_lookup::add_to_linker::<PluginCtx, Plugin>(linker, PluginCtx::view)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// What our replacements see of a run's store.
pub struct PluginView<'a> {
    clock: &'a VirtualClock,
    log: &'a RunLog,
    /// wasmtime's sockets view (its network resource and error codes).
    sockets: WasiSocketsCtxView<'a>,
}

struct Plugin;

impl HasData for Plugin {
    type Data<'a> = PluginView<'a>;
}

impl PluginCtx {
    fn view(&mut self) -> PluginView<'_> {
        let sockets = WasiSocketsCtxView { ctx: self.wasi.sockets(), table: &mut self.table };
        PluginView { clock: &self.clock, log: &self.log, sockets }
    }
}

impl monotonic_clock::Host for PluginView<'_> {
    fn now(&mut self) -> wasmtime::Result<u64> {
        Ok(self.clock.0.now.fetch_add(NOW_TICK_NS, Ordering::Relaxed).saturating_add(NOW_TICK_NS))
    }

    fn resolution(&mut self) -> wasmtime::Result<u64> {
        Ok(NOW_TICK_NS)
    }

    fn subscribe_instant(&mut self, when: u64) -> wasmtime::Result<Resource<DynPollable>> {
        self.clock.subscribe(self.sockets.table, when)
    }

    fn subscribe_duration(&mut self, duration: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let at = self.clock.now().saturating_add(duration);
        self.clock.subscribe(self.sockets.table, at)
    }
}

/// `wasi:io/poll` is wasmtime's, raced against the virtual clock: a wait
/// that ends past the deadline traps right there (the run then ends as any
/// trap does, unwinding the guest), rather than leaving it suspended.
impl poll::Host for PluginView<'_> {
    async fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        let clock = self.clock;
        let reps: Vec<u32> = pollables.iter().map(|p| p.rep()).collect();
        if let Some(decided) = clock.wait_on_timers(&reps) {
            return decided.map_err(wasmtime::Error::new);
        }
        tokio::select! {
            ready = poll::Host::poll(&mut *self.sockets.table, pollables) => ready,
            over = clock.overslept() => Err(wasmtime::Error::new(over)),
        }
    }
}

impl poll::HostPollable for PluginView<'_> {
    async fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        let clock = self.clock;
        if let Some(decided) = clock.wait_on_timers(&[pollable.rep()]) {
            return decided.map(drop).map_err(wasmtime::Error::new);
        }
        tokio::select! {
            done = poll::HostPollable::block(&mut *self.sockets.table, pollable) => done,
            over = clock.overslept() => Err(wasmtime::Error::new(over)),
        }
    }

    async fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        poll::HostPollable::ready(&mut *self.sockets.table, pollable).await
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        lock(&self.clock.0.timers).remove(&pollable.rep());
        poll::HostPollable::drop(&mut *self.sockets.table, pollable)
    }
}

const NO_NETWORK: &str = "denied: the plugin tried to use the network (pricing plugins have none)";
const NO_NAMES: &str = "denied: the plugin tried to look up a host name (pricing plugins have no network)";

impl tcp_create_socket::Host for PluginView<'_> {
    fn create_tcp_socket(&mut self, _: IpAddressFamily) -> SocketResult<Resource<TcpSocket>> {
        self.log.note(NO_NETWORK);
        Err(ErrorCode::AccessDenied.into())
    }
}

impl udp_create_socket::Host for PluginView<'_> {
    async fn create_udp_socket(&mut self, _: IpAddressFamily) -> SocketResult<Resource<UdpSocket>> {
        self.log.note(NO_NETWORK);
        Err(ErrorCode::AccessDenied.into())
    }
}

impl ip_name_lookup::Host for PluginView<'_> {
    fn resolve_addresses(
        &mut self,
        _: Resource<Network>,
        _: String,
    ) -> SocketResult<Resource<ResolveAddressStream>> {
        self.log.note(NO_NAMES);
        Err(ErrorCode::AccessDenied.into())
    }
}

/// No stream is ever created (every lookup is refused); these exist because
/// the interface declares the resource.
impl ip_name_lookup::HostResolveAddressStream for PluginView<'_> {
    fn resolve_next_address(&mut self, _: Resource<ResolveAddressStream>) -> SocketResult<Option<IpAddress>> {
        Err(ErrorCode::AccessDenied.into())
    }

    fn subscribe(&mut self, _: Resource<ResolveAddressStream>) -> wasmtime::Result<Resource<DynPollable>> {
        Err(wasmtime::Error::msg("no name lookup exists in a pricing plugin"))
    }

    fn drop(&mut self, stream: Resource<ResolveAddressStream>) -> wasmtime::Result<()> {
        self.sockets.table.delete(stream)?;
        Ok(())
    }
}

/// The network resource and error codes are wasmtime's.
impl network::Host for PluginView<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        self.sockets.convert_error_code(error)
    }

    fn network_error_code(
        &mut self,
        error: Resource<wasmtime_wasi::p2::bindings::io::error::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        self.sockets.network_error_code(error)
    }
}

impl network::HostNetwork for PluginView<'_> {
    fn drop(&mut self, network: Resource<Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.sockets, network)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use wasmtime_wasi::p2::bindings::io::poll::{Host as _, HostPollable as _};

    #[tokio::test]
    async fn the_earliest_wait_fires_at_once_and_moves_the_virtual_clock() {
        let clock = VirtualClock::new(Duration::from_millis(100));
        let mut table = ResourceTable::new();
        let started = std::time::Instant::now();
        let late = clock.subscribe(&mut table, 90_000_000).unwrap();
        let early = clock.subscribe(&mut table, 10_000_000).unwrap();
        let (late_again, early_again) = (Resource::new_borrow(late.rep()), Resource::new_borrow(early.rep()));
        // Not ready yet, and looking does not move the clock.
        assert!(!table.ready(Resource::new_borrow(early.rep())).await.unwrap());
        assert_eq!(clock.elapsed(), Duration::ZERO);
        // poll([late, early]) returns the early one only, at its time.
        let ready = table.poll(vec![late_again, early_again]).await.unwrap();
        assert_eq!(ready, vec![1]);
        assert_eq!(clock.elapsed(), Duration::from_millis(10));
        table.block(Resource::new_borrow(late.rep())).await.unwrap();
        assert_eq!(clock.elapsed(), Duration::from_millis(90));
        assert!(started.elapsed() < Duration::from_secs(1), "a virtual wait holds no host time");

        // A wait past the limit never ends; the run is told to stop.
        let past = clock.subscribe(&mut table, 100_000_001).unwrap();
        let waited = tokio::select! {
            _ = table.block(past) => None,
            over = clock.overslept() => Some(over.asked_ns),
        };
        assert_eq!(waited, Some(10_000_001));
    }

    #[test]
    fn a_wait_on_timers_alone_is_decided_at_once() {
        let clock = VirtualClock::new(Duration::from_millis(100));
        let mut table = ResourceTable::new();
        let late = clock.subscribe(&mut table, 90_000_000).unwrap();
        let early = clock.subscribe(&mut table, 10_000_000).unwrap();
        let also_early = clock.subscribe(&mut table, 10_000_000).unwrap();
        // No future, no scheduler: the earliest end fires, with its equals.
        let fired = clock.wait_on_timers(&[late.rep(), early.rep(), also_early.rep()]);
        assert_eq!(fired.unwrap().unwrap(), vec![1, 2]);
        assert_eq!(clock.elapsed(), Duration::from_millis(10));
        // What has fired stays ready, and the clock does not move for it.
        assert_eq!(clock.wait_on_timers(&[early.rep()]).unwrap().unwrap(), vec![0]);
        assert_eq!(clock.elapsed(), Duration::from_millis(10));
        // Anything but a clock subscription among them: not decided here.
        let past = clock.subscribe(&mut table, 100_000_001).unwrap();
        assert!(clock.wait_on_timers(&[past.rep(), past.rep() + 1_000]).is_none());
        // A wait past the limit is the deadline, and the clock stays.
        let fired = clock.wait_on_timers(&[past.rep(), late.rep()]).unwrap();
        assert_eq!(fired.unwrap(), vec![1], "the late one ends within the limit");
        assert_eq!(clock.elapsed(), Duration::from_millis(90));
        let over = clock.wait_on_timers(&[past.rep()]).unwrap().unwrap_err();
        assert_eq!(over.asked_ns, 10_000_001);
        assert_eq!(clock.elapsed(), Duration::from_millis(90));
    }

    #[test]
    fn host_notes_come_first_once_each_and_survive_a_flood() {
        use tokio::io::AsyncWrite;
        let log = RunLog::default();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let flood = vec![b'x'; LOG_BYTES * 2];
        let mut w = log.clone();
        assert!(
            matches!(Pin::new(&mut w).poll_write(&mut cx, &flood), Poll::Ready(Ok(n)) if n == flood.len())
        );
        log.note(NO_NETWORK);
        log.note(NO_NETWORK);
        let text = log.text();
        assert!(text.starts_with(&format!("[mercato] {NO_NETWORK}\nxxx")), "{}", &text[..200]);
        assert_eq!(text.matches(NO_NETWORK).count(), 1);
        assert!(text.ends_with("[log truncated]"));
    }

    #[test]
    fn seeded_randomness_depends_only_on_the_digest() {
        assert_eq!(seeded_bytes("sha256:aa"), seeded_bytes("sha256:aa"));
        assert_ne!(seeded_bytes("sha256:aa"), seeded_bytes("sha256:ab"));
    }
}
