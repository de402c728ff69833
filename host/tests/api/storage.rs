//! One storage suite, run on every backend (SQLite, PostgreSQL, in-memory):
//! the guarantees the `wasi:keyvalue` and transaction capabilities rely on,
//! and the host's own repositories.

use std::collections::HashSet;

use mercato::storage::Db;
use mercato::storage::kv::{LIST_PAGE, MAX_BATCH, Scope};

use crate::each_backend;
use crate::helpers::*;

const A: Scope<'static> = Scope { namespace: "alpha", bucket: "things" };
const B: Scope<'static> = Scope { namespace: "beta", bucket: "things" };

async fn db(backend: Backend) -> (Db, tempfile::TempDir, Option<PgDatabase>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = fresh_database(backend).await;
    let db = Db::connect(backend.url(pg.as_ref()).as_deref(), dir.path()).await.expect("connect");
    (db, dir, pg)
}

async fn basics_and_namespaces(backend: Backend) {
    let (db, _dir, _pg) = db(backend).await;
    assert!(db.kv_get(A, "k").await.expect("get").is_none());
    db.kv_set(A, "k", b"one").await.expect("set");
    db.kv_set(B, "k", b"other").await.expect("set");
    assert_eq!(db.kv_get(A, "k").await.expect("get").map(|v| v.value), Some(b"one".to_vec()));
    assert_eq!(db.kv_get(B, "k").await.expect("get").map(|v| v.value), Some(b"other".to_vec()));
    db.kv_set(A, "k", b"two").await.expect("overwrite");
    assert_eq!(db.kv_get(A, "k").await.expect("get").map(|v| v.value), Some(b"two".to_vec()));
    db.kv_delete(A, "k").await.expect("delete");
    assert!(db.kv_get(A, "k").await.expect("get").is_none());
    assert!(db.kv_get(B, "k").await.expect("get").is_some(), "another namespace is untouched");
    db.kv_delete(A, "absent").await.expect("deleting an absent key succeeds");
    let other_bucket = Scope { namespace: "alpha", bucket: "else" };
    assert!(db.kv_get(other_bucket, "k").await.expect("get").is_none());
}
each_backend!(kv_basics, basics_and_namespaces);

async fn list_pages_in_byte_order(backend: Backend) {
    let (db, _dir, _pg) = db(backend).await;
    let keys: Vec<String> = (0..1_200).map(|i| format!("k{i:05}")).collect();
    let pairs: Vec<(String, Vec<u8>)> = keys.iter().map(|k| (k.clone(), vec![1])).collect();
    db.kv_set_many(A, &pairs).await.expect("set many");
    db.kv_set(A, "K-upper", b"x").await.expect("set");
    db.kv_set(A, "k_", b"x").await.expect("set");
    db.kv_set(B, "k00001x", b"x").await.expect("other namespace");
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let (page, more) = db.kv_list(A, cursor.as_deref()).await.expect("list");
        pages += 1;
        assert!(page.len() <= LIST_PAGE);
        cursor = page.last().cloned();
        seen.extend(page);
        if !more {
            break;
        }
    }
    assert_eq!(pages, 3);
    let mut expected: Vec<String> = keys.clone();
    expected.push("K-upper".into());
    expected.push("k_".into());
    expected.sort(); // Rust sorts strings by bytes, as both backends must.
    assert_eq!(seen, expected);
}
each_backend!(kv_list, list_pages_in_byte_order);

async fn compare_and_swap_is_exact(backend: Backend) {
    let (db, _dir, _pg) = db(backend).await;
    assert!(db.kv_swap(A, "c", None, b"1").await.expect("insert"), "insert-if-absent on an absent key");
    assert!(!db.kv_swap(A, "c", None, b"2").await.expect("insert"), "insert-if-absent on a present key");
    let v1 = db.kv_get(A, "c").await.expect("get").expect("present");
    assert!(db.kv_swap(A, "c", Some(v1.version), b"2").await.expect("swap"));
    assert!(!db.kv_swap(A, "c", Some(v1.version), b"3").await.expect("swap"), "a stale version loses");
    let v2 = db.kv_get(A, "c").await.expect("get").expect("present");
    assert_eq!(v2.value, b"2");
    // ABA: delete and recreate; the old handle must not match the new key.
    db.kv_delete(A, "c").await.expect("delete");
    db.kv_set(A, "c", b"2").await.expect("recreate");
    assert!(!db.kv_swap(A, "c", Some(v2.version), b"4").await.expect("swap"));
    // A plain set also invalidates handles.
    let v3 = db.kv_get(A, "c").await.expect("get").expect("present");
    db.kv_set(A, "c", b"5").await.expect("set");
    assert!(!db.kv_swap(A, "c", Some(v3.version), b"6").await.expect("swap"));
}
each_backend!(kv_cas, compare_and_swap_is_exact);

async fn concurrent_cas_loses_no_update(backend: Backend) {
    let (db, _dir, _pg) = db(backend).await;
    let tasks: Vec<_> = (0..24)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                loop {
                    let current = db.kv_get(A, "counter").await.expect("get");
                    let n: u64 = current
                        .as_ref()
                        .map_or(0, |v| String::from_utf8_lossy(&v.value).parse().expect("number"));
                    let expected = current.map(|v| v.version);
                    if db.kv_swap(A, "counter", expected, (n + 1).to_string().as_bytes()).await.expect("swap")
                    {
                        return;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let v = db.kv_get(A, "counter").await.expect("get").expect("present");
    assert_eq!(v.value, b"24");
}
each_backend!(kv_cas_concurrency, concurrent_cas_loses_no_update);

async fn increments_are_atomic(backend: Backend) {
    let (db, _dir, _pg) = db(backend).await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..5 {
                    seen.push(db.kv_increment(A, "seq", 1).await.expect("increment"));
                }
                seen
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), 100, "every increment returned a distinct value");
    assert_eq!(all.iter().max(), Some(&100));
    assert_eq!(db.kv_increment(A, "seq", -10).await.expect("decrement"), 90);
    db.kv_set(A, "text", b"abc").await.expect("set");
    assert!(db.kv_increment(A, "text", 1).await.is_err(), "a non-integer value is an error");
    db.kv_set(A, "max", i64::MAX.to_string().as_bytes()).await.expect("set");
    assert!(db.kv_increment(A, "max", 1).await.is_err(), "overflow is an error");
}
each_backend!(kv_increment, increments_are_atomic);

async fn batches(backend: Backend) {
    let (db, _dir, _pg) = db(backend).await;
    let pairs: Vec<(String, Vec<u8>)> =
        (0..700).map(|i| (format!("b{i}"), i.to_string().into_bytes())).collect();
    db.kv_set_many(A, &pairs).await.expect("set many");
    let keys: Vec<String> = vec!["b699".into(), "missing".into(), "b0".into()];
    let values = db.kv_get_many(A, &keys).await.expect("get many");
    assert_eq!(values, vec![Some(b"699".to_vec()), None, Some(b"0".to_vec())]);
    let all: Vec<String> = pairs.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(
        db.kv_get_many(A, &all).await.expect("get many").iter().flatten().count(),
        700,
        "chunked reads"
    );
    db.kv_delete_many(A, &all[..650]).await.expect("delete many");
    assert_eq!(db.kv_count("alpha").await.expect("count"), 50);
    let too_many: Vec<String> = (0..=MAX_BATCH).map(|i| format!("x{i}")).collect();
    assert!(db.kv_get_many(A, &too_many).await.is_err());
}
each_backend!(kv_batch, batches);

// ---- transactions (`mercato:commerce/transactions`) ---------------------

use mercato::storage::tx::{Failed, Op, Precondition, Reason, Write};

fn w(namespace: &'static str, key: &str, precondition: Precondition, op: Op) -> Write {
    Write { namespace, bucket: "things".into(), key: key.into(), precondition, op }
}

fn add(namespace: &'static str, key: &str, delta: i64, min: i64) -> Write {
    w(namespace, key, Precondition::None, Op::Add { delta, min, max: i64::MAX })
}

async fn value(db: &Db, scope: Scope<'_>, key: &str) -> Option<String> {
    db.kv_get(scope, key).await.expect("get").map(|v| String::from_utf8(v.value).expect("utf-8"))
}

async fn transactions_are_all_or_none(backend: Backend) {
    let (db, _dir, _pg) = db(backend).await;
    let put = |ns, k: &str, p, v: &str| w(ns, k, p, Op::Put(v.as_bytes().to_vec()));
    // All apply, across namespaces, with fresh versions for writes.
    let versions = db
        .tx_commit(&[
            put("alpha", "a", Precondition::Absent, "1"),
            put("beta", "b", Precondition::None, "2"),
            add("alpha", "n", 5, 0),
        ])
        .await
        .expect("commit")
        .expect("applied");
    assert!(versions.iter().all(|v| *v != 0), "{versions:?}");
    assert_eq!(value(&db, A, "a").await.as_deref(), Some("1"));
    assert_eq!(value(&db, B, "b").await.as_deref(), Some("2"));
    assert_eq!(value(&db, A, "n").await.as_deref(), Some("5"), "an absent counter starts at 0");
    let version_a = db.kv_get(A, "a").await.expect("get").expect("a").version;
    assert_eq!(version_a, versions[0], "the version returned is the stored one");

    // One failing precondition: nothing is written, and it is named.
    let refused = db
        .tx_commit(&[
            put("alpha", "c", Precondition::None, "3"),
            add("alpha", "n", -6, 0),
            put("beta", "b", Precondition::None, "changed"),
        ])
        .await
        .expect("commit");
    assert_eq!(refused, Err(Failed { index: 1, reason: Reason::OutOfBounds, current: Some(5) }));
    assert_eq!(value(&db, A, "c").await, None, "all or none");
    assert_eq!(value(&db, B, "b").await.as_deref(), Some("2"));
    assert_eq!(value(&db, A, "n").await.as_deref(), Some("5"));

    let failed = |writes: Vec<Write>| {
        let db = db.clone();
        async move { db.tx_commit(&writes).await.expect("commit").expect_err("refused") }
    };
    assert_eq!(failed(vec![put("alpha", "a", Precondition::Absent, "x")]).await.reason, Reason::Present);
    assert_eq!(failed(vec![put("alpha", "zz", Precondition::Present, "x")]).await.reason, Reason::Absent);
    let stale = failed(vec![put("alpha", "a", Precondition::Version(version_a ^ 2), "x")]).await;
    assert_eq!(stale.reason, Reason::VersionMismatch);
    assert_eq!(failed(vec![w("alpha", "zz", Precondition::Present, Op::Check)]).await.reason, Reason::Absent);
    assert_eq!(
        failed(vec![w("alpha", "zz", Precondition::Present, Op::Delete)]).await.reason,
        Reason::Absent
    );
    assert_eq!(failed(vec![add("alpha", "a2", -1, 0)]).await.current, Some(0), "absent is 0");
    db.kv_set(A, "json", br#"{"a":1}"#).await.expect("set");
    assert_eq!(failed(vec![add("alpha", "json", 1, 0)]).await.reason, Reason::NotACounter);
    let bounded = w("alpha", "n", Precondition::None, Op::Add { delta: 1, min: i64::MIN, max: 5 });
    assert_eq!(failed(vec![bounded]).await.reason, Reason::OutOfBounds, "upper bounds hold too");

    // Version preconditions apply; delete and check with a version.
    db.tx_commit(&[put("alpha", "a", Precondition::Version(version_a), "new")])
        .await
        .expect("commit")
        .expect("the version matched");
    assert_eq!(value(&db, A, "a").await.as_deref(), Some("new"));
    let version = db.kv_get(A, "a").await.expect("get").expect("a").version;
    db.tx_commit(&[
        w("alpha", "a", Precondition::Version(version), Op::Check),
        w("alpha", "a", Precondition::Version(version), Op::Delete),
    ])
    .await
    .expect("commit")
    .expect("check then delete at one version");
    assert_eq!(value(&db, A, "a").await, None);

    // Reads give values and versions in order; a read of a counter is its text.
    let rows =
        db.tx_read("alpha", "things", &["n".into(), "missing".into(), "n".into()]).await.expect("read");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].as_ref().map(|r| r.value.clone()), Some(b"5".to_vec()));
    assert!(rows[1].is_none());
    assert_eq!(rows[2].as_ref().map(|r| r.version), rows[0].as_ref().map(|r| r.version));
}
each_backend!(tx_all_or_none, transactions_are_all_or_none);

/// Counters at the edges of i64 behave alike on every backend: any
/// canonical decimal in range is a counter, a sum that would leave the range
/// is out of bounds (not a storage error, not a float), and nothing changes.
async fn counters_at_the_edges_of_i64(backend: Backend) {
    let (db, _dir, _pg) = db(backend).await;
    let full = |key: &str, delta: i64| {
        w("alpha", key, Precondition::None, Op::Add { delta, min: i64::MIN, max: i64::MAX })
    };
    let commit = |writes: Vec<Write>| {
        let db = db.clone();
        async move { db.tx_commit(&writes).await.expect("no storage error") }
    };
    for (start, delta, expected) in [
        ("1000000000000000000", 1, "1000000000000000001"),
        ("-1000000000000000000", -1, "-1000000000000000001"),
        ("9223372036854775806", 1, "9223372036854775807"),
        ("-9223372036854775807", -1, "-9223372036854775808"),
        ("-1", i64::MIN + 1, "-9223372036854775808"),
    ] {
        db.kv_set(A, "edge", start.as_bytes()).await.expect("set");
        commit(vec![full("edge", delta)]).await.unwrap_or_else(|f| panic!("{start} + {delta}: {f:?}"));
        assert_eq!(value(&db, A, "edge").await.as_deref(), Some(expected), "{start} + {delta}");
    }
    for (start, delta) in
        [("-1", i64::MIN), ("9223372036854775807", 1), ("1", i64::MAX), ("-9223372036854775808", -1)]
    {
        db.kv_set(A, "edge", start.as_bytes()).await.expect("set");
        let failed = commit(vec![full("edge", delta)]).await.expect_err("overflow refused");
        let current = start.parse::<i64>().expect("i64");
        assert_eq!(
            failed,
            Failed { index: 0, reason: Reason::OutOfBounds, current: Some(current) },
            "{start} + {delta}"
        );
        assert_eq!(
            value(&db, A, "edge").await.as_deref(),
            Some(start),
            "{start} + {delta} changed the counter"
        );
    }
    for text in ["9223372036854775808", "-9223372036854775809", "99999999999999999999", "+1", "01", "-0"] {
        db.kv_set(A, "edge", text.as_bytes()).await.expect("set");
        assert_eq!(
            commit(vec![full("edge", 1)]).await.expect_err("refused").reason,
            Reason::NotACounter,
            "{text}"
        );
    }
}
each_backend!(tx_counter_edges, counters_at_the_edges_of_i64);

/// 64 concurrent transactions each take 3 from a counter of 100 (and 1 from a
/// second one, in the other key order): exactly 33 apply, none fails for
/// contention (no deadlock, no serialization error), and the counters end
/// at 1 and 100 − 33.
async fn bounded_counters_under_contention(backend: Backend) {
    let (db, _dir, _pg) = db(backend).await;
    db.tx_commit(&[add("alpha", "hot", 100, 0), add("alpha", "warm", 100, 0)])
        .await
        .expect("commit")
        .expect("seeded");
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut writes = vec![add("alpha", "hot", -3, 0), add("alpha", "warm", -1, 0)];
                if i % 2 == 1 {
                    writes.reverse();
                }
                db.tx_commit(&writes).await
            })
        })
        .collect();
    let mut applied = 0;
    for t in tasks {
        match t.await.expect("task").expect("no database error under contention") {
            Ok(_) => applied += 1,
            Err(f) => assert_eq!(f.reason, Reason::OutOfBounds, "{f:?}"),
        }
    }
    assert_eq!(applied, 33);
    assert_eq!(value(&db, A, "hot").await.as_deref(), Some("1"));
    assert_eq!(value(&db, A, "warm").await.as_deref(), Some("67"));
}
each_backend!(tx_contention, bounded_counters_under_contention);

// ---- the host's own repositories -----------------------------------------

use mercato::storage::accounts::MerchantRow;
use mercato::storage::plugins::{PluginErrorRow, RECENT_ERRORS};

async fn merchants_and_settings(backend: Backend) {
    let (db, _dir, _pg) = db(backend).await;
    assert_eq!(db.merchant_count().await.expect("count"), 0);
    let row =
        |id: &str| MerchantRow { id: id.into(), name: format!("{id} ltd"), token_hash: format!("h-{id}") };
    db.insert_merchant(&row("m1"), 1).await.expect("insert");
    db.insert_merchant(&row("m2"), 2).await.expect("insert");
    assert!(
        db.insert_merchant(&MerchantRow { name: "other".into(), ..row("m1") }, 3).await.is_err(),
        "ids are unique"
    );
    assert_eq!(db.merchant_count().await.expect("count"), 2);
    let m1 = db.merchant("m1").await.expect("get").expect("m1");
    assert_eq!((m1.name.as_str(), m1.token_hash.as_str()), ("m1 ltd", "h-m1"), "the first insert stays");
    assert!(db.merchant("m3").await.expect("get").is_none());

    assert!(db.setting("k").await.expect("get").is_none());
    assert_eq!(db.setting_insert_or_get("k", "first").await.expect("insert"), "first");
    assert_eq!(
        db.setting_insert_or_get("k", "second").await.expect("insert"),
        "first",
        "the first value wins"
    );
    assert_eq!(db.setting("k").await.expect("get").as_deref(), Some("first"));
}
each_backend!(repo_accounts, merchants_and_settings);

async fn component_versions_and_activations(backend: Backend) {
    let (db, _dir, _pg) = db(backend).await;
    assert!(db.active_component("catalog").await.expect("active").is_none());
    let v1 = db.put_component_version("catalog", "sha256:a", b"aaaa", "upload", 10).await.expect("put");
    let again = db.put_component_version("catalog", "sha256:a", b"aaaa", "oci", 11).await.expect("put");
    let v2 = db.put_component_version("catalog", "sha256:b", b"bb", "oci", 12).await.expect("put");
    let cart = db.put_component_version("cart", "sha256:a", b"aaaa", "upload", 13).await.expect("put");
    assert_eq!((v1, again, v2, cart), (1, 1, 2, 1), "numbered per component, once per digest");
    let versions = db.component_versions("catalog").await.expect("versions");
    assert_eq!(
        versions.iter().map(|v| (v.version, v.size, v.source.as_str())).collect::<Vec<_>>(),
        [(1, 4, "upload"), (2, 2, "oci")]
    );
    assert_eq!(
        db.component_version_by_digest("catalog", "sha256:b").await.expect("get").map(|v| v.version),
        Some(2)
    );
    assert!(db.component_version_by_digest("payment", "sha256:b").await.expect("get").is_none());
    assert_eq!(db.component_bytes("catalog", 2).await.expect("bytes").as_deref(), Some(&b"bb"[..]));
    assert!(db.component_bytes("catalog", 3).await.expect("bytes").is_none());

    assert!(db.activate_component("catalog", 3, 19).await.is_err(), "only a recorded version");
    db.activate_component("catalog", 1, 20).await.expect("activate");
    db.activate_component("catalog", 1, 21).await.expect("activating the active version");
    db.activate_component("catalog", 2, 22).await.expect("activate");
    let active = db.active_component("catalog").await.expect("active").expect("one");
    assert_eq!((active.version.version, active.seq, active.activated_at), (2, 2, 22));
    let all = db.component_activations("catalog", false, 10).await.expect("activations");
    assert_eq!(
        all.iter().map(|a| (a.seq, a.version)).collect::<Vec<_>>(),
        [(2, 2), (1, 1)],
        "newest first, no repeat"
    );

    assert!(db.roll_back_component("catalog", 2, 30).await.expect("roll back"));
    assert!(!db.roll_back_component("catalog", 2, 31).await.expect("roll back"), "once only");
    let active = db.active_component("catalog").await.expect("active").expect("one");
    assert_eq!((active.version.version, active.seq), (1, 1), "back to the one before");
    let live = db.component_activations("catalog", true, 10).await.expect("live");
    assert_eq!(live.iter().map(|a| a.seq).collect::<Vec<_>>(), [1]);
    let all = db.component_activations("catalog", false, 1).await.expect("limit");
    assert_eq!(all.iter().map(|a| (a.seq, a.rolled_back_at)).collect::<Vec<_>>(), [(2, Some(30))]);
    assert!(db.active_component("cart").await.expect("active").is_none(), "per component");
}
each_backend!(repo_components, component_versions_and_activations);

/// One live canary at a time (of any component, also when two writers race);
/// ending is once only; promote ends it and activates its version in one
/// step, and not after it ended.
async fn canaries_one_at_a_time(backend: Backend) {
    let (db, _dir, _pg) = db(backend).await;
    for (component, digest) in [("catalog", "sha256:a"), ("catalog", "sha256:b"), ("cart", "sha256:c")] {
        db.put_component_version(component, digest, b"x", "upload", 1).await.expect("put");
    }
    db.activate_component("catalog", 1, 2).await.expect("activate");
    // Eight racing starts, two components: exactly one wins.
    let starts: Vec<_> = (0..8)
        .map(|i| {
            let db = db.clone();
            let (component, version) = if i % 2 == 0 { ("catalog", 2) } else { ("cart", 1) };
            tokio::spawn(async move { db.start_canary(component, version, 10, 3).await.expect("start") })
        })
        .collect();
    let mut won = Vec::new();
    for s in starts {
        won.extend(s.await.expect("task"));
    }
    assert_eq!(won.len(), 1, "{won:?}");
    let first = won.pop().expect("one");
    assert_eq!(db.live_canaries().await.expect("live"), vec![first.clone()]);
    assert!(db.end_canary(&first.component, first.seq, "rolled_back", "bad", 4).await.expect("end"));
    assert!(!db.end_canary(&first.component, first.seq, "replaced", "again", 5).await.expect("end"), "once");
    assert!(!db.promote_canary(&first.component, first.seq, 5).await.expect("promote"), "not after it ended");
    assert!(db.live_canaries().await.expect("live").is_empty());
    let ended = db.component_canaries(&first.component, 10).await.expect("history");
    assert_eq!(
        (ended[0].outcome.as_deref(), ended[0].reason.as_deref(), ended[0].ended_at),
        (Some("rolled_back"), Some("bad"), Some(4))
    );

    let canary = db.start_canary("catalog", 2, 25, 6).await.expect("start").expect("none live");
    assert!(canary.seq > first.seq);
    assert!(db.start_canary("cart", 1, 25, 6).await.expect("start").is_none(), "one at a time");
    assert_eq!(db.active_component("catalog").await.expect("active").expect("one").version.version, 1);
    assert!(db.promote_canary("catalog", canary.seq, 7).await.expect("promote"));
    assert_eq!(db.active_component("catalog").await.expect("active").expect("one").version.version, 2);
    let history = db.component_canaries("catalog", 10).await.expect("history");
    assert_eq!((history[0].outcome.as_deref(), history[0].ended_at), (Some("promoted"), Some(7)));
    assert!(!db.promote_canary("catalog", canary.seq, 8).await.expect("promote"), "once");
    assert_eq!(db.component_activations("catalog", false, 10).await.expect("activations").len(), 2);
}
each_backend!(repo_canaries, canaries_one_at_a_time);

async fn plugins_blobs_limits_and_errors(backend: Backend) {
    let (db, _dir, _pg) = db(backend).await;
    let error = |i: i64| PluginErrorRow {
        at: i,
        digest: "d1".into(),
        kind: "trap".into(),
        message: format!("error {i}"),
        log: String::new(),
    };
    for id in ["m1", "m2", "m3"] {
        let row = MerchantRow { id: id.into(), name: id.into(), token_hash: id.into() };
        db.insert_merchant(&row, 0).await.expect("merchant");
    }
    assert!(db.put_plugin("nobody", "d1", b"one", 1).await.is_err(), "a plugin belongs to a merchant");
    assert!(db.set_plugin_limits("nobody", "{}", 1).await.is_err(), "limits belong to a merchant");
    db.put_plugin("m2", "d1", b"one", 1).await.expect("put");
    db.put_plugin("m1", "d1", b"one", 2).await.expect("put");
    db.set_plugin_limits("m1", r#"{"memory":1}"#, 3).await.expect("limits");
    db.set_plugin_limits("m3", r#"{"memory":2}"#, 3).await.expect("limits without a plugin");
    let names = ["m2".to_string(), "m3".into(), "m1".into(), "m2".into()];
    let active = db.active_plugins(&names).await.expect("active");
    assert_eq!(
        active
            .iter()
            .map(|p| (p.merchant_id.as_str(), p.digest.as_str(), p.size, p.limits.as_deref()))
            .collect::<Vec<_>>(),
        [("m1", "d1", 3, Some(r#"{"memory":1}"#)), ("m2", "d1", 3, None)],
        "only merchants with a plugin, by id, once each"
    );
    assert_eq!(db.plugin_limits("m3").await.expect("limits").as_deref(), Some(r#"{"memory":2}"#));

    for i in 0..(RECENT_ERRORS + 5) {
        db.record_plugin_error("m1", &error(i)).await.expect("record");
    }
    db.record_plugin_error("m2", &error(100)).await.expect("record");
    let errors = db.plugin_errors("m1").await.expect("errors");
    assert_eq!(errors.len() as i64, RECENT_ERRORS, "only the newest are kept");
    assert_eq!(errors[0].at, RECENT_ERRORS + 4, "newest first");
    assert_eq!(errors.last().map(|e| e.at), Some(5));

    // A new version: its errors start empty; the old binary stays while m2 uses it.
    db.put_plugin("m1", "d2", b"two!", 4).await.expect("replace");
    assert!(db.plugin_errors("m1").await.expect("errors").is_empty());
    assert_eq!(db.plugin_errors("m2").await.expect("errors").len(), 1, "per merchant");
    assert_eq!(db.plugin("m1").await.expect("get").map(|p| (p.digest, p.size)), Some(("d2".into(), 4)));
    assert_eq!(db.plugin_blob("d1").await.expect("blob").as_deref(), Some(&b"one"[..]));
    assert!(db.delete_plugin("m2").await.expect("delete"));
    assert!(!db.delete_plugin("m2").await.expect("delete"), "nothing left to delete");
    assert!(db.plugin_blob("d1").await.expect("blob").is_none(), "an unused binary goes");
    assert!(db.plugin_errors("m2").await.expect("errors").is_empty());
    assert_eq!(db.plugin_blob("d2").await.expect("blob").as_deref(), Some(&b"two!"[..]));
}
each_backend!(repo_plugins, plugins_blobs_limits_and_errors);

/// Recorded plugin runs: pages newest first, per merchant; configuration;
/// retention by count and by bytes holds under 10,000 runs; a binary only
/// pruned runs referred to goes, one a kept run refers to stays.
async fn plugin_runs_configuration_and_retention(backend: Backend) {
    use mercato::storage::plugins::{Retention, RunRow};
    let (db, _dir, _pg) = db(backend).await;
    for id in ["m1", "m2"] {
        let row = MerchantRow { id: id.into(), name: id.into(), token_hash: id.into() };
        db.insert_merchant(&row, 0).await.expect("merchant");
    }
    assert_eq!(db.plugin_config("m1").await.expect("config"), None);
    db.set_plugin_config("m1", Some(r#"{"a": 1}"#), 2).await.expect("set");
    assert!(
        db.set_plugin_config("nobody", Some("{}"), 2).await.is_err(),
        "a configuration belongs to a merchant"
    );
    db.put_plugin("m1", "d-live", b"live", 3).await.expect("put");
    assert_eq!(db.plugin("m1").await.expect("plugin").and_then(|p| p.config).as_deref(), Some(r#"{"a": 1}"#));
    db.set_plugin_config("m1", None, 4).await.expect("remove");
    assert_eq!(db.plugin("m1").await.expect("plugin").and_then(|p| p.config), None);

    let run = |i: usize, merchant: &str, digest: &str| RunRow {
        seq: 0,
        id: format!("run_{merchant}_{i:05}"),
        merchant_id: merchant.to_string(),
        at: i as i64,
        digest: digest.to_string(),
        outcome: if i.is_multiple_of(10) { "trap".into() } else { "ok".into() },
        // 100 to 1,099 bytes.
        record: "x".repeat(100 + (i * 7919) % 1000),
    };
    // An old binary that only the first runs refer to (no merchant uses it).
    db.put_plugin("m2", "d-old", b"old", 5).await.expect("put");
    db.put_plugin("m2", "d-new", b"new", 6).await.expect("replace");
    assert!(db.plugin_blob("d-old").await.expect("blob").is_none(), "no run refers to it yet");
    db.put_plugin("m2", "d-old", b"old", 7).await.expect("put again");
    db.record_plugin_runs(&[run(0, "m2", "d-old")], Retention { runs: 10, bytes: 1 << 20, binaries: 10 })
        .await
        .expect("record");
    db.put_plugin("m2", "d-new", b"new", 8).await.expect("replace");
    assert!(db.plugin_blob("d-old").await.expect("blob").is_some(), "a recorded run refers to it");

    let retention = Retention { runs: 300, bytes: 200_000, binaries: 10 };
    let mut batch = Vec::new();
    for i in 1..=10_000 {
        batch.push(run(i, if i % 2 == 0 { "m1" } else { "m2" }, if i % 2 == 0 { "d-live" } else { "d-new" }));
        if batch.len() == 250 {
            db.record_plugin_runs(&batch, retention).await.expect("record");
            batch.clear();
        }
    }
    for merchant in ["m1", "m2"] {
        let mut kept = Vec::new();
        let mut before = None;
        loop {
            let page = db.plugin_runs(merchant, before, 64).await.expect("page");
            let Some(last) = page.last() else { break };
            before = Some(last.seq);
            kept.extend(page);
        }
        let bytes: usize = kept.iter().map(|r| r.record.len()).sum();
        assert!(kept.len() <= 300 && bytes <= 200_000, "{merchant}: {} runs, {bytes} bytes kept", kept.len());
        assert!(kept.len() > 150, "{merchant}: the bound is not far under ({} runs)", kept.len());
        assert!(kept.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
        assert!(kept.iter().all(|r| r.merchant_id == merchant), "per merchant");
        // The newest are the ones kept.
        let newest = if merchant == "m1" { 10_000 } else { 9_999 };
        assert_eq!(kept[0].at, newest);
        let expected: Vec<i64> = (0..kept.len() as i64).map(|k| newest - 2 * k).collect();
        assert_eq!(
            kept.iter().map(|r| r.at).collect::<Vec<_>>(),
            expected,
            "{merchant}: a gap in the newest"
        );
        let one = db.plugin_run(merchant, &kept[3].id).await.expect("run").expect("kept");
        assert_eq!(one, kept[3]);
        let other = if merchant == "m1" { "m2" } else { "m1" };
        assert_eq!(db.plugin_run(other, &kept[3].id).await.expect("run"), None, "another merchant's run");
    }
    assert!(
        db.plugin_blob("d-old").await.expect("blob").is_none(),
        "its only run was pruned: the binary goes"
    );
    assert!(db.plugin_blob("d-new").await.expect("blob").is_some(), "in use");

    // Runs of at most `binaries` distinct binaries are kept: the newest used.
    let many: Vec<RunRow> = (0..15).map(|i| run(20_000 + i, "m1", &format!("d-x{i:02}"))).collect();
    db.record_plugin_runs(&many, Retention { runs: 1000, bytes: 1 << 30, binaries: 10 })
        .await
        .expect("record");
    let kept = db.plugin_runs("m1", None, 1000).await.expect("runs");
    let mut digests: Vec<&str> = kept.iter().map(|r| r.digest.as_str()).collect();
    digests.sort();
    digests.dedup();
    let expected: Vec<String> = (5..15).map(|i| format!("d-x{i:02}")).collect();
    assert_eq!(digests, expected, "the 10 binaries run last");
}
each_backend!(repo_plugin_runs, plugin_runs_configuration_and_retention);

/// Leases (the event relay's): one holder at a time; the holder renews it;
/// another takes it only once it has lapsed (by the database's clock);
/// giving it up frees it at once, and only its holder can.
async fn leases_have_one_holder_at_a_time(backend: Backend) {
    let (db, _dir, _pg) = db(backend).await;
    assert!(db.lease("relay", "a", 10_000).await.expect("lease"), "free: a takes it");
    assert!(!db.lease("relay", "b", 10_000).await.expect("lease"), "held by a");
    assert!(db.lease("other", "b", 10_000).await.expect("lease"), "another lease is another matter");
    assert!(db.lease("relay", "a", 300).await.expect("lease"), "a renews it, for 300 ms");
    assert!(!db.lease("relay", "b", 10_000).await.expect("lease"), "still a's");
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(db.lease("relay", "b", 10_000).await.expect("lease"), "lapsed: b takes it");
    assert!(!db.lease("relay", "a", 10_000).await.expect("lease"), "b's now");
    db.lease_release("relay", "a").await.expect("release");
    assert!(!db.lease("relay", "a", 10_000).await.expect("lease"), "a cannot give up b's lease");
    db.lease_release("relay", "b").await.expect("release");
    assert!(db.lease("relay", "a", 10_000).await.expect("lease"), "given up: free at once");
}
each_backend!(leases, leases_have_one_holder_at_a_time);
