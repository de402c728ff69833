//! Every component call is a span of its own when spans are exported:
//! `component_call{component, function, version, outcome}`, peers included.
//! A test binary of its own, because it installs the process's subscriber.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mercato::config::{Config, Secret};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// The fields of every `component_call` span, once it has closed.
#[derive(Clone, Default)]
struct Spans {
    open: Arc<Mutex<HashMap<u64, HashMap<String, String>>>>,
    closed: Arc<Mutex<Vec<HashMap<String, String>>>>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        if attrs.metadata().name() == "component_call" {
            let mut fields = HashMap::new();
            attrs.record(&mut Fields(&mut fields));
            self.open.lock().unwrap().insert(id.into_u64(), fields);
        }
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some(fields) = self.open.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
    fn on_close(&self, id: Id, _: Context<'_, S>) {
        if let Some(fields) = self.open.lock().unwrap().remove(&id.into_u64()) {
            self.closed.lock().unwrap().push(fields);
        }
    }
}

fn has(spans: &[HashMap<String, String>], want: &[(&str, &str)]) -> bool {
    spans.iter().any(|s| want.iter().all(|(k, v)| s.get(*k).map(String::as_str) == Some(*v)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_component_call_is_a_span_when_spans_are_on() {
    let spans = Spans::default();
    tracing_subscriber::registry().with(spans.clone()).try_init().expect("the only subscriber");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        admin_token: Some(Secret("spans".into())),
        ..Config::default()
    };
    let app = mercato::App::build(config).await.expect("build");
    let runtime = app.state.runtime.clone();
    let list = |runtime: mercato::runtime::Runtime| async move {
        let mut catalog = runtime.instance::<mercato::bindings::catalog::Service>().await.expect("instance");
        catalog
            .call("list-products", |c, s| c.mercato_commerce_catalog().call_list_products(s, 5, None, None))
            .await
            .expect("no fault")
            .expect("a page")
    };

    // Off (no exporter configured): no spans.
    let page = list(runtime.clone()).await;
    assert!(!page.items.is_empty(), "the demo catalog is seeded");
    assert!(spans.closed.lock().unwrap().is_empty(), "spans while off");

    mercato::telemetry::trace_component_calls(true);
    list(runtime.clone()).await;
    let unknown = "p999999999999".to_string();
    let missing = {
        let mut catalog = runtime.instance::<mercato::bindings::catalog::Service>().await.expect("instance");
        catalog
            .call("get-product", |c, s| c.mercato_commerce_catalog().call_get_product(s, &unknown))
            .await
            .expect("no fault")
    };
    assert!(missing.is_err(), "an unknown product is a domain error, not a fault");
    mercato::telemetry::trace_component_calls(false);

    // Background work (recovery passes) may call the order component meanwhile.
    let closed: Vec<_> = spans
        .closed
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.get("component").map(String::as_str) != Some("order"))
        .cloned()
        .collect();
    let ok = [("outcome", "ok"), ("version", "1")];
    assert!(
        has(&closed, &[&[("component", "catalog"), ("function", "list-products")][..], &ok].concat()),
        "{closed:?}"
    );
    // The catalog's call into inventory, through the host, has its own span.
    assert!(
        has(&closed, &[&[("component", "inventory"), ("function", "available")][..], &ok].concat()),
        "{closed:?}"
    );
    assert!(
        has(&closed, &[("component", "catalog"), ("function", "get-product"), ("outcome", "ok")]),
        "{closed:?}"
    );
    assert_eq!(closed.len(), 3, "{closed:?}");
}
