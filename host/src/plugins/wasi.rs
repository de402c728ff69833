//! The WASI a pricing plugin sees (SPEC §2): inert and deterministic.
//!
//! - **Clocks**: the wall clock always says [`FIXED_TIME`]; the monotonic
//!   clock is *virtual*: it starts at zero, advances by [`NOW_TICK_NS`] per
//!   reading and jumps forward when the plugin waits. A subscription
//!   (`subscribe-duration`, `subscribe-instant`, and so every `sleep` and
//!   every `poll` with a time-out) is ready at once, so a plugin that sleeps
//!   holds no host time; one that asks to wait past its deadline is stopped
//!   there ([`VirtualDeadline`]). The same plugin on the same cart always
//!   sees the same times: a run can be replayed.
//! - **Sockets**: linked with nothing behind them. Creating a TCP or UDP
//!   socket and looking up a name fail with `access-denied` before any OS
//!   resource exists (so no other socket operation is reachable); the first
//!   attempt of a run is noted in its log.
//! - **Files**: `wasi:filesystem` with no preopened directory.
//! - stdin is empty; stdout and stderr go to the run's capped log
//!   ([`RunLog`]); randomness is seeded from the plugin's digest.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{self, ResolveAddressStream};
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, IpAddress, IpAddressFamily, Network};
use wasmtime_wasi::p2::bindings::sockets::{tcp_create_socket, udp_create_socket};
use wasmtime_wasi::p2::{DynPollable, Pollable, SocketError, SocketResult, TcpSocket, UdpSocket, subscribe};
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

/// The virtual monotonic clock of one run, in nanoseconds since its start.
pub struct VirtualClock {
    now: Arc<AtomicU64>,
    /// Waits that would end past this are refused (the run's deadline).
    limit_ns: u64,
}

impl VirtualClock {
    pub fn new(deadline: Duration) -> VirtualClock {
        VirtualClock {
            now: Arc::new(AtomicU64::new(0)),
            limit_ns: u64::try_from(deadline.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Virtual time elapsed so far.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.now.load(Ordering::Relaxed))
    }

    fn subscribe(&self, table: &mut ResourceTable, at: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let now = self.now.load(Ordering::Relaxed);
        if at > self.limit_ns {
            return Err(wasmtime::Error::new(VirtualDeadline { asked_ns: at.saturating_sub(now) }));
        }
        let timer = table.push(VirtualTimer { at, now: self.now.clone(), yielded: false })?;
        subscribe(table, timer)
    }
}

/// A wait on the virtual clock: ready at once, moving the clock to its end.
struct VirtualTimer {
    at: u64,
    now: Arc<AtomicU64>,
    yielded: bool,
}

#[wasmtime_wasi::async_trait]
impl Pollable for VirtualTimer {
    async fn ready(&mut self) {
        self.now.fetch_max(self.at, Ordering::Relaxed);
        if !self.yielded {
            // A plugin that waits in a loop still lets the executor run
            // other tasks now and then (as wasmtime's own zero timers do).
            self.yielded = true;
            tokio::task::yield_now().await;
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
}

impl tokio::io::AsyncWrite for RunLog {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let mut guard = self.lock();
        let room = LOG_BYTES.saturating_sub(guard.bytes.len());
        let take = room.min(buf.len());
        guard.bytes.extend_from_slice(&buf[..take]);
        if take < buf.len() {
            guard.truncated = true;
        }
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
        Ok(self.clock.now.fetch_add(NOW_TICK_NS, Ordering::Relaxed).saturating_add(NOW_TICK_NS))
    }

    fn resolution(&mut self) -> wasmtime::Result<u64> {
        Ok(NOW_TICK_NS)
    }

    fn subscribe_instant(&mut self, when: u64) -> wasmtime::Result<Resource<DynPollable>> {
        self.clock.subscribe(self.sockets.table, when)
    }

    fn subscribe_duration(&mut self, duration: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let at = self.clock.now.load(Ordering::Relaxed).saturating_add(duration);
        self.clock.subscribe(self.sockets.table, at)
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

    #[tokio::test]
    async fn waits_are_ready_at_once_and_move_the_virtual_clock() {
        let clock = VirtualClock::new(Duration::from_millis(100));
        let mut table = ResourceTable::new();
        let started = std::time::Instant::now();
        clock.subscribe(&mut table, 60_000_000).unwrap();
        let mut timer = VirtualTimer { at: 60_000_000, now: clock.now.clone(), yielded: false };
        timer.ready().await;
        timer.ready().await;
        assert!(started.elapsed() < Duration::from_secs(1), "a virtual wait holds no host time");
        assert_eq!(clock.elapsed(), Duration::from_millis(60));
        let err = clock.subscribe(&mut table, 100_000_001).unwrap_err();
        let over = err.downcast_ref::<VirtualDeadline>().unwrap();
        assert_eq!(over.asked_ns, 40_000_001);
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
