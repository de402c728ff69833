//! The hostile-plugin zoo: each feature builds a plugin that misbehaves in
//! one way. The host must stop it within its budget (or refuse its output),
//! drop its adjustments, record the error and keep serving.

wit_bindgen::generate!({
    path: "../../../wit/pricing",
    world: "mercato:pricing/plugin",
});

use exports::mercato::pricing::pricing::Guest;
use mercato::pricing::types::{Cart, Discount, Money, Pricing};

/// The sku of another merchant that `foreign-sku` tries to discount.
pub const FOREIGN_SKU: &str = "ZOO-OTHER-1";

struct Zoo;

#[allow(dead_code)]
fn first(cart: &Cart) -> (&str, i64) {
    let line = &cart.lines[0];
    (&line.sku, line.unit_price.amount * i64::from(line.quantity))
}

#[allow(dead_code)]
fn discount(sku: &str, amount: i64, currency: &str) -> Discount {
    Discount {
        sku: sku.into(),
        label: "zoo".into(),
        amount: Money { amount, currency: currency.into() },
        code: None,
    }
}

#[allow(dead_code)]
fn deep(n: u64) -> u64 {
    if n == 0 { 0 } else { std::hint::black_box(deep(std::hint::black_box(n - 1))) + 1 }
}

impl Guest for Zoo {
    fn price(cart: Cart) -> Result<Pricing, String> {
        misbehave(cart).map(|discounts| Pricing { discounts, rejected_codes: Vec::new() })
    }
}

#[allow(unreachable_code, unused_variables)]
fn misbehave(cart: Cart) -> Result<Vec<Discount>, String> {
    {
        #[cfg(feature = "loop")]
        loop {
            std::hint::black_box(&cart);
        }
        #[cfg(feature = "alloc")]
        {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        #[cfg(feature = "recursion")]
        {
            let n = deep(u64::MAX);
            return Err(format!("unreachable: {n}"));
        }
        #[cfg(feature = "panic")]
        {
            println!("zoo: about to panic on {} lines", cart.lines.len());
            for i in 0..200 {
                println!("zoo: filling the log, line {i}");
            }
            panic!("zoo: boom");
        }
        #[cfg(feature = "huge-output")]
        {
            let (sku, _) = first(&cart);
            return Ok((0..2_000).map(|_| discount(sku, 0, &cart.currency)).collect());
        }
        #[cfg(feature = "wrong-currency")]
        {
            let (sku, _) = first(&cart);
            let other = if cart.currency == "USD" { "EUR" } else { "USD" };
            return Ok(vec![discount(sku, 1, other)]);
        }
        #[cfg(feature = "over-discount")]
        {
            let (sku, gross) = first(&cart);
            return Ok(vec![discount(sku, gross + 1, &cart.currency)]);
        }
        #[cfg(feature = "foreign-sku")]
        {
            return Ok(vec![discount(FOREIGN_SKU, 1, &cart.currency)]);
        }
        #[cfg(feature = "sleep")]
        {
            // Far past any deadline; then it would even give a discount.
            std::thread::sleep(std::time::Duration::from_secs(30));
            let (sku, _) = first(&cart);
            return Ok(vec![discount(sku, 1, &cart.currency)]);
        }
        #[cfg(feature = "nap")]
        {
            // A short wait within the deadline: it ends at once in host
            // time, and the plugin's clock says it slept.
            let started = std::time::Instant::now();
            std::thread::sleep(std::time::Duration::from_millis(20));
            let slept = started.elapsed();
            println!("nap: slept {} µs", slept.as_micros());
            let (sku, _) = first(&cart);
            return Ok(vec![discount(sku, slept.as_millis() as i64, &cart.currency)]);
        }
        #[cfg(feature = "poll")]
        loop {
            // wasi-libc's poll(2) with no descriptors and a timeout of ~24
            // days: a wasi:io/poll wait on a clock subscription.
            // SAFETY: no descriptors are passed (null with a count of zero).
            unsafe { libc::poll(std::ptr::null_mut(), 0, i32::MAX) };
        }
        #[cfg(feature = "sockets")]
        {
            use std::net::{TcpStream, ToSocketAddrs};
            let lookup = "example.com:443".to_socket_addrs().map(|_| ()).map_err(|e| e.to_string());
            let connect = TcpStream::connect("127.0.0.1:5432").map(|_| ()).map_err(|e| e.to_string());
            println!("sockets: lookup {lookup:?}, connect {connect:?}");
            return Err(format!("no network: lookup {lookup:?}, connect {connect:?}"));
        }
        #[cfg(feature = "entropy")]
        {
            // Everything a plugin can observe besides its input: the wall
            // clock, the monotonic clock across a short sleep, and random
            // numbers (std's hash seed comes from wasi:random). A replay
            // must see the same values, or it is not exact.
            use std::hash::{BuildHasher, Hash, Hasher};
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let started = std::time::Instant::now();
            std::thread::sleep(std::time::Duration::from_millis(3));
            let slept = started.elapsed().as_nanos();
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            cart.lines.len().hash(&mut hasher);
            let random = hasher.finish();
            println!("entropy: wall {wall} slept {slept} random {random:016x}");
            let (sku, gross) = first(&cart);
            let mut d = discount(sku, (random % 97) as i64 % gross.max(1), &cart.currency);
            d.label = format!("w{wall} s{slept} r{random:016x}");
            return Ok(vec![d]);
        }
        #[cfg(feature = "stdout-flood")]
        {
            use std::io::Write;
            let chunk = [b'x'; 64 * 1024];
            let mut out = std::io::stdout();
            loop {
                let _ = out.write_all(&chunk);
            }
        }
        Ok(Vec::new())
    }
}

#[cfg(target_family = "wasm")]
export!(Zoo);
