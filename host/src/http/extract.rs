//! Extractors whose rejections use the API's error shape.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;

/// `axum::Json` with API-shaped rejections: 400 `malformed_json`, 422
/// `invalid_request`, 413 `payload_too_large`, 415 `unsupported_media_type`.
///
/// A number with no fractional part is an integer, as in JSON Schema (the
/// OpenAPI document's `"type": "integer"` admits `7.0`): integer fields
/// accept `7.0` as `7`; `7.5` stays an error that names its field.
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // Through a `Value` that refuses repeated keys (`{"email": "a", "email": "b"}`
        // is an error, as it is for the derived structs, not "the last one
        // wins") and reads integral floats as integers, in one pass.
        let value = match axum::Json::<StrictValue>::from_request(req, state).await {
            Ok(axum::Json(StrictValue(v))) => v,
            Err(rejection) => return Err(json_rejection(rejection)),
        };
        serde_path_to_error::deserialize(value).map(Json).map_err(|e| {
            let path = e.path().to_string();
            let e = e.into_inner();
            let message = if path == "." { e.to_string() } else { format!("{path}: {e}") };
            ApiError::bad_request("invalid_request", message)
        })
    }
}

/// A JSON value in which no object repeats a key, and every float with no
/// fractional part that fits an `i64`/`u64` is that integer.
struct StrictValue(serde_json::Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        // Exact bounds: 2^63 and 2^64 are representable; anything below them
        // with no fraction converts without rounding.
        if v.fract() == 0.0 && (-9_223_372_036_854_775_808.0..18_446_744_073_709_551_616.0).contains(&v) {
            return Ok(if v < 0.0 { (v as i64).into() } else { (v as u64).into() });
        }
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, serde_json::Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(serde_json::Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(value) = map.next_value()?;
            if fields.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate field `{key}`")));
            }
            fields.insert(key, value);
        }
        Ok(serde_json::Value::Object(fields))
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::JsonSyntaxError(e) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("body is not valid JSON: {}", e.body_text()),
        ),
        JsonRejection::JsonDataError(e) => ApiError::bad_request("invalid_request", e.body_text()),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body is too large")
        }
        other => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", other.body_text()),
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
    header
        .to_str()
        .ok()
        .and_then(crate::auth::bearer)
        .ok_or_else(|| ApiError::unauthorized("Authorization must be Bearer <token>"))
}

/// A request authenticated with a merchant token; holds the merchant id.
pub struct Merchant(pub String);

impl FromRequestParts<AppState> for Merchant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        match crate::auth::merchant(&state.db, token).await {
            Ok(Some(id)) => Ok(Merchant(id)),
            Ok(None) => Err(ApiError::unauthorized("invalid merchant token")),
            Err(e) => Err(ApiError::internal(e)),
        }
    }
}

/// A request authenticated with the admin token.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        if crate::auth::verify(token, &state.admin_token_hash) {
            Ok(Admin)
        } else {
            Err(ApiError::unauthorized("invalid admin token"))
        }
    }
}

/// The media type of a request (`Content-Type` without parameters), or "".
pub fn media_type(headers: &axum::http::HeaderMap) -> &str {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or("")
}

/// A raw upload body, or the API's error for a body that could not be read:
/// 413 `payload_too_large` naming `what` and its `limit`, else 400.
pub fn upload_body(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    what: &str,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("{what} can be at most {limit} bytes"),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_request", r.body_text())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integral_floats_become_integers_and_fractions_stay() {
        let StrictValue(v) = serde_json::from_str(
            r#"{"a": 7820.0, "b": [1.0, -3.0, 2.5], "c": {"d": 0.0, "e": 1e300}, "f": "7.0"}"#,
        )
        .expect("valid");
        assert_eq!(v, json!({"a": 7820, "b": [1, -3, 2.5], "c": {"d": 0, "e": 1e300}, "f": "7.0"}));
        assert!(v["a"].is_u64() && v["b"][1].is_i64() && v["c"]["e"].is_f64());
        #[derive(serde::Deserialize, Debug)]
        struct Limits {
            #[allow(dead_code)]
            deadline_ms: u64,
        }
        let StrictValue(fractional) = serde_json::from_str(r#"{"deadline_ms": 7.5}"#).expect("valid");
        let err = serde_path_to_error::deserialize::<_, Limits>(fractional).expect_err("7.5 is no u64");
        assert_eq!(err.path().to_string(), "deadline_ms");
    }

    #[test]
    fn repeated_keys_are_refused_at_any_depth() {
        let ok: StrictValue =
            serde_json::from_str(r#"{"a": [1, 2.5, {"b": null}], "c": "d"}"#).expect("valid");
        assert_eq!(ok.0, json!({"a": [1, 2.5, {"b": null}], "c": "d"}));
        for body in [r#"{"email": "a@b", "email": "x@y"}"#, r#"{"a": [{"b": 1, "b": 2}]}"#] {
            let err = serde_json::from_str::<StrictValue>(body).err().expect("refused");
            assert!(err.to_string().contains("duplicate field"), "{err}");
        }
    }
}

/// `?limit=&cursor=` of a newest-first page whose cursor is a row number
/// (recorded plugin runs, webhook deliveries).
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,19}$")]
    cursor: Option<String>,
}

impl PageQuery {
    /// The limit and the row the page starts before, from the query (or
    /// 422 `invalid_request`). Any cursor of up to 19 digits (the
    /// document's pattern) is one: 0 gives an empty page, one past every
    /// row the newest.
    pub fn read(
        query: Result<axum::extract::Query<PageQuery>, axum::extract::rejection::QueryRejection>,
    ) -> Result<(u32, Option<i64>), crate::http::ApiError> {
        use crate::http::ApiError;
        let axum::extract::Query(q) =
            query.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
        let limit = q.limit.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            return Err(ApiError::bad_request("invalid_request", "limit: 1 to 100"));
        }
        let cursor = match q.cursor.as_deref() {
            None => None,
            Some(c) if !c.is_empty() && c.len() <= 19 && c.bytes().all(|b| b.is_ascii_digit()) => {
                Some(c.parse::<u64>().map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX)))
            }
            Some(_) => {
                return Err(ApiError::bad_request("invalid_request", "cursor: the next_cursor of a page"));
            }
        };
        Ok((limit, cursor))
    }
}
