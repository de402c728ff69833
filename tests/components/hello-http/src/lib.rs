//! The smallest useful `wasi:http` component: answers every request with
//! `200 {"hello":"world"}`. `cargo bench --bench read_path` serves it with
//! `wasmtime serve` as the baseline a product read is measured against.

wit_bindgen::generate!({
    path: "../../../wit",
    inline: "
        package mercato:hello;
        world hello {
            export wasi:http/incoming-handler@0.2.12;
        }
    ",
    world: "mercato:hello/hello",
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest;
use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

const BODY: &[u8] = br#"{"hello":"world"}"#;

struct Hello;

impl Guest for Hello {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"application/json".to_vec()]);
        let response = OutgoingResponse::new(headers);
        let Ok(body) = response.body() else { return };
        ResponseOutparam::set(out, Ok(response));
        if let Ok(stream) = body.write() {
            let _ = stream.blocking_write_and_flush(BODY);
        }
        let _ = OutgoingBody::finish(body, None);
    }
}

export!(Hello);
