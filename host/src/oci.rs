//! Components as OCI artifacts, in the CNCF TAG Runtime Wasm layout: an OCI
//! image manifest (media type set explicitly) whose config has the media type
//! `application/vnd.wasm.config.v0+json` and lists the component's imports and
//! exports, and one layer `application/wasm` holding the component.
//! (`oci-client`'s own `WASM_*` constants are an older, different layout.)
//!
//! Signatures (see [`crate::signature`]) are artifacts under the
//! tag `sha256-<component hex>.sig` of the same repository.

use std::collections::BTreeMap;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol, Config as OciConfig, ImageLayer};
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};

use crate::auth::Secret;
use crate::signature::{self, SIGNATURE_CONFIG_MEDIA_TYPE, SIGNATURE_MEDIA_TYPE, SignatureDoc};
use crate::wasm::digest_of;

pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";

/// Largest component artifact a pull accepts, by default.
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 64 * 1024 * 1024;
/// Time-out of each registry call, by default.
pub const DEFAULT_REGISTRY_TIMEOUT_MS: u64 = 60_000;
/// Largest signature document read.
const MAX_SIGNATURE_BYTES: u64 = 64 * 1024;

/// How to reach registries (`[registry]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Basic-auth user (`MERCATO_REGISTRY__USERNAME`), for `auth_registry` only.
    pub username: Option<String>,
    /// Basic-auth password (`MERCATO_REGISTRY__PASSWORD`), for `auth_registry` only.
    pub password: Option<Secret>,
    /// The registry (`host` or `host:port`, as in references) the username
    /// and password are for: they are sent to no other registry.
    pub auth_registry: Option<String>,
    /// Registries (`host:port`) that may be reached over plain HTTP besides
    /// loopback ones.
    pub insecure: Vec<String>,
    /// Registries (`host` or `host:port`, as in references) deploys and
    /// watches may pull from (`MERCATO_REGISTRY__ALLOWED='["ghcr.io"]'`); a
    /// reference to any other is refused before anything is fetched. Empty:
    /// any registry.
    pub allowed: Vec<String>,
    /// Largest component a pull accepts, in bytes: a manifest that declares a
    /// larger layer is refused before anything is allocated, and a blob that
    /// streams past its declared size (or this) is cut off.
    pub max_artifact_bytes: u64,
    /// Time-out of each registry call (manifest, blob, push), in ms.
    pub timeout_ms: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            username: None,
            password: None,
            auth_registry: None,
            insecure: Vec::new(),
            allowed: Vec::new(),
            max_artifact_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
            timeout_ms: DEFAULT_REGISTRY_TIMEOUT_MS,
        }
    }
}

/// A sink for a blob that refuses bytes past `max`.
struct Capped {
    bytes: Vec<u8>,
    max: u64,
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if (self.bytes.len() + buf.len()) as u64 > self.max {
            let max = self.max;
            return std::task::Poll::Ready(Err(std::io::Error::other(format!(
                "the blob is larger than the {max} bytes it may have"
            ))));
        }
        self.bytes.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("bad reference {0:?}: {1}")]
    Reference(String, String),
    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },
    #[error("{0}")]
    Artifact(String),
}

/// The CNCF Wasm config document (`application/vnd.wasm.config.v0+json`).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    pub created: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub architecture: String,
    pub os: String,
    pub layer_digests: Vec<String>,
    pub component: ComponentShape,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ComponentShape {
    pub exports: Vec<String>,
    pub imports: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// A pulled component.
#[derive(Debug)]
pub struct Pulled {
    pub bytes: Vec<u8>,
    /// `sha256:…` of the component (the layer).
    pub digest: String,
    /// `sha256:…` of the manifest the reference resolved to.
    pub manifest_digest: String,
    /// `registry/repository@manifest-digest`.
    pub pinned: String,
}

/// A pushed component.
#[derive(Debug)]
pub struct Pushed {
    pub digest: String,
    pub manifest_digest: String,
    pub signature_tag: Option<String>,
}

/// `oci://reg/repo:tag` or `reg/repo:tag` → a reference.
pub fn parse(reference: &str) -> Result<Reference, OciError> {
    let text = reference.strip_prefix("oci://").unwrap_or(reference);
    text.parse::<Reference>().map_err(|e| OciError::Reference(reference.to_string(), e.to_string()))
}

/// Is `registry` (`host[:port]`) on this machine?
fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => registry,
    };
    crate::net::is_loopback_host(host)
}

/// A registry client with the configured credentials.
#[derive(Clone)]
pub struct Oci {
    config: RegistryConfig,
}

impl Oci {
    pub fn new(config: RegistryConfig) -> Oci {
        // reqwest is built without a default TLS provider (ring here, not
        // aws-lc); install it once. A second install is a harmless error.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Oci { config }
    }

    /// Is the configuration whole? Credentials without the registry they
    /// are for would go nowhere (or, before, to every registry).
    pub fn check(config: &RegistryConfig) -> Result<(), String> {
        if config.username.is_some() && config.auth_registry.as_deref().is_none_or(str::is_empty) {
            return Err(
                "registry.username is set but registry.auth_registry is not: set it to the registry \
                        (host or host:port) the credentials are for; they are sent to no other"
                    .into(),
            );
        }
        if let Some(bad) =
            config.allowed.iter().find(|a| a.is_empty() || a.contains(['/', ' ']) || a.contains("://"))
        {
            return Err(format!(
                "registry.allowed: {bad:?} is not a registry; write host or host:port, as in references (ghcr.io, 127.0.0.1:5000)"
            ));
        }
        Ok(())
    }

    /// `reference` parsed, if its registry is one deploys may pull from
    /// (`registry.allowed`).
    pub fn reference(&self, reference: &str) -> Result<Reference, OciError> {
        let r = parse(reference)?;
        let allowed = self.config.allowed.is_empty()
            || self.config.allowed.iter().any(|a| {
                a.eq_ignore_ascii_case(r.registry()) || a.eq_ignore_ascii_case(r.resolve_registry())
            });
        if !allowed {
            return Err(OciError::Reference(
                reference.to_string(),
                format!("registry {} is not in registry.allowed", r.registry()),
            ));
        }
        Ok(r)
    }

    /// The credentials for `reference`'s registry: the configured ones only
    /// for `auth_registry`, anonymous everywhere else.
    fn auth_for(&self, reference: &Reference) -> RegistryAuth {
        let theirs = self.config.auth_registry.as_deref().is_some_and(|r| {
            r.eq_ignore_ascii_case(reference.registry())
                || r.eq_ignore_ascii_case(reference.resolve_registry())
        });
        match (&self.config.username, &self.config.password) {
            (Some(user), password) if theirs => {
                RegistryAuth::Basic(user.clone(), password.as_ref().map(|p| p.0.clone()).unwrap_or_default())
            }
            _ => RegistryAuth::Anonymous,
        }
    }

    /// A client for `reference`'s registry: HTTPS, except plain HTTP for a
    /// loopback registry or one listed in `insecure`.
    fn client(&self, reference: &Reference) -> Client {
        let registry = reference.resolve_registry().to_string();
        let plain = is_loopback(&registry) || self.config.insecure.iter().any(|r| r == &registry);
        let protocol =
            if plain { ClientProtocol::HttpsExcept(vec![registry]) } else { ClientProtocol::Https };
        let timeout = Some(Duration::from_millis(self.config.timeout_ms));
        Client::new(ClientConfig {
            protocol,
            read_timeout: timeout,
            connect_timeout: timeout,
            ..ClientConfig::default()
        })
    }

    /// `call`, or a registry error once `registry.timeout_ms` has passed.
    async fn timed<T>(
        &self,
        reference: &Reference,
        call: impl std::future::Future<Output = Result<T, oci_client::errors::OciDistributionError>>,
    ) -> Result<T, OciError> {
        match tokio::time::timeout(Duration::from_millis(self.config.timeout_ms), call).await {
            Ok(result) => result.map_err(|e| Self::error(reference, e)),
            Err(_) => Err(Self::error(reference, format!("no answer within {} ms", self.config.timeout_ms))),
        }
    }

    /// Pull `layer` of `reference`, at most `max` bytes and its declared size.
    async fn pull_capped(
        &self,
        client: &Client,
        reference: &Reference,
        layer: &OciDescriptor,
        max: u64,
    ) -> Result<Vec<u8>, OciError> {
        let declared = u64::try_from(layer.size).unwrap_or(u64::MAX);
        if declared > max {
            return Err(OciError::Artifact(format!(
                "the artifact's layer is {declared} bytes, over the limit of {max} bytes (registry.max_artifact_bytes)"
            )));
        }
        let mut sink =
            Capped { bytes: Vec::with_capacity(usize::try_from(declared).unwrap_or(0)), max: declared };
        self.timed(reference, client.pull_blob(reference, layer, &mut sink)).await?;
        Ok(sink.bytes)
    }

    fn error(reference: &Reference, e: impl std::fmt::Display) -> OciError {
        OciError::Registry { registry: reference.registry().to_string(), message: e.to_string() }
    }

    /// The manifest digest `reference` points at now.
    pub async fn resolve(&self, reference: &str) -> Result<String, OciError> {
        let r = self.reference(reference)?;
        self.timed(&r, self.client(&r).fetch_manifest_digest(&r, &self.auth_for(&r))).await
    }

    /// Pull the component at `reference` (a tag is resolved to a digest).
    pub async fn pull(&self, reference: &str) -> Result<Pulled, OciError> {
        let r = self.reference(reference)?;
        let client = self.client(&r);
        let (manifest, manifest_digest) =
            self.timed(&r, client.pull_image_manifest(&r, &self.auth_for(&r))).await?;
        let layer = wasm_layer(&manifest)?;
        let pinned_ref = r.clone_with_digest(manifest_digest.clone());
        let bytes = self.pull_capped(&client, &pinned_ref, layer, self.config.max_artifact_bytes).await?;
        let digest = digest_of(&bytes);
        if digest != layer.digest {
            return Err(OciError::Artifact(format!(
                "layer digest mismatch: the manifest says {}, the bytes are {digest}",
                layer.digest
            )));
        }
        Ok(Pulled {
            bytes,
            digest,
            pinned: format!("{}/{}@{manifest_digest}", r.registry(), r.repository()),
            manifest_digest,
        })
    }

    /// The signature stored next to `reference`'s repository for the
    /// component with `digest`, if there is one.
    pub async fn signature(&self, reference: &str, digest: &str) -> Result<Option<SignatureDoc>, OciError> {
        let r = self.reference(reference)?;
        let sig_ref = signature_ref(&r, digest);
        let client = self.client(&sig_ref);
        let fetched = tokio::time::timeout(
            Duration::from_millis(self.config.timeout_ms),
            client.pull_image_manifest(&sig_ref, &self.auth_for(&sig_ref)),
        )
        .await
        .map_err(|_| Self::error(&r, format!("no answer within {} ms", self.config.timeout_ms)))?;
        let (manifest, _) = match fetched {
            Ok(m) => m,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(Self::error(&r, e)),
        };
        let Some(layer) = manifest.layers.iter().find(|l| l.media_type == SIGNATURE_MEDIA_TYPE) else {
            return Ok(None);
        };
        let bytes = self.pull_capped(&client, &sig_ref, layer, MAX_SIGNATURE_BYTES).await?;
        let doc: SignatureDoc = serde_json::from_slice(&bytes)
            .map_err(|e| OciError::Artifact(format!("unreadable signature document: {e}")))?;
        Ok((doc.digest == digest).then_some(doc))
    }

    /// Push a one-layer OCI image manifest (its media type set explicitly).
    async fn push_one(
        &self,
        client: &Client,
        r: &Reference,
        layer: ImageLayer,
        config: OciConfig,
        annotations: Option<BTreeMap<String, String>>,
    ) -> Result<(), OciError> {
        let layers = [layer];
        let mut manifest = OciImageManifest::build(&layers, &config, annotations);
        manifest.media_type = Some(OCI_IMAGE_MEDIA_TYPE.to_string());
        self.timed(r, client.push(r, &layers, config, &self.auth_for(r), Some(manifest))).await?;
        Ok(())
    }

    /// Push `bytes` (a component with `imports`/`exports`) to `reference`,
    /// and its signature if `sign` is given.
    pub async fn push(
        &self,
        reference: &str,
        bytes: Vec<u8>,
        imports: Vec<String>,
        exports: Vec<String>,
        sign: Option<&ed25519_dalek::SigningKey>,
    ) -> Result<Pushed, OciError> {
        let r = self.reference(reference)?;
        if r.digest().is_some() {
            return Err(OciError::Reference(reference.to_string(), "push to a tag, not a digest".into()));
        }
        let client = self.client(&r);
        let digest = digest_of(&bytes);
        let config = WasmConfig {
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            author: None,
            architecture: "wasm".into(),
            os: "wasip2".into(),
            layer_digests: vec![digest.clone()],
            component: ComponentShape { exports, imports, target: None },
        };
        let config_bytes =
            serde_json::to_vec(&config).map_err(|e| OciError::Artifact(format!("config: {e}")))?;
        self.push_one(
            &client,
            &r,
            ImageLayer::new(bytes, WASM_LAYER_MEDIA_TYPE.to_string(), None),
            OciConfig::new(config_bytes, WASM_CONFIG_MEDIA_TYPE.to_string(), None),
            None,
        )
        .await?;
        let manifest_digest = self.timed(&r, client.fetch_manifest_digest(&r, &self.auth_for(&r))).await?;
        let signature_tag = match sign {
            None => None,
            Some(key) => {
                let body = serde_json::to_vec(&signature::sign(key, &digest))
                    .map_err(|e| OciError::Artifact(e.to_string()))?;
                let annotations = BTreeMap::from([("dev.mercato.signed-digest".to_string(), digest.clone())]);
                let sig_ref = signature_ref(&r, &digest);
                self.push_one(
                    &client,
                    &sig_ref,
                    ImageLayer::new(body, SIGNATURE_MEDIA_TYPE.to_string(), None),
                    OciConfig::new(b"{}".to_vec(), SIGNATURE_CONFIG_MEDIA_TYPE.to_string(), None),
                    Some(annotations),
                )
                .await?;
                sig_ref.tag().map(str::to_string)
            }
        };
        Ok(Pushed { digest, manifest_digest, signature_tag })
    }
}

/// Where the signature of the component with `digest` lives: tag
/// `sha256-<hex>.sig` of `r`'s repository.
fn signature_ref(r: &Reference, digest: &str) -> Reference {
    Reference::with_tag(r.registry().to_string(), r.repository().to_string(), signature::tag_for(digest))
}

/// The registry answered "no such manifest" (not a failure to reach it).
fn is_not_found(e: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode};
    match e {
        E::ImageManifestNotFoundError(_) => true,
        E::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|x| matches!(x.code, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown)),
        _ => false,
    }
}

/// The one `application/wasm` layer of a component artifact.
fn wasm_layer(manifest: &OciImageManifest) -> Result<&OciDescriptor, OciError> {
    let wasm: Vec<_> = manifest.layers.iter().filter(|l| l.media_type == WASM_LAYER_MEDIA_TYPE).collect();
    match wasm.as_slice() {
        [one] => Ok(one),
        [] => Err(OciError::Artifact(format!(
            "not a Wasm component artifact: no {WASM_LAYER_MEDIA_TYPE} layer (layers: {})",
            manifest.layers.iter().map(|l| l.media_type.as_str()).collect::<Vec<_>>().join(", ")
        ))),
        _ => Err(OciError::Artifact(format!("more than one {WASM_LAYER_MEDIA_TYPE} layer"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_and_loopback() {
        assert_eq!(parse("oci://127.0.0.1:5000/m/catalog:v2").expect("ref").repository(), "m/catalog");
        assert!(parse("not a reference").is_err() && parse("reg/Repo:x").is_err());
        let allowed = |list: &[&str]| {
            Oci::check(&RegistryConfig {
                allowed: list.iter().map(|s| s.to_string()).collect(),
                ..RegistryConfig::default()
            })
        };
        assert!(allowed(&["ghcr.io", "127.0.0.1:5000"]).is_ok());
        for bad in ["https://ghcr.io", "ghcr.io/acme", ""] {
            assert!(allowed(&[bad]).unwrap_err().contains("registry.allowed"), "{bad:?}");
        }
        assert!(is_loopback("127.0.0.1:5000") && is_loopback("localhost:1") && is_loopback("[::1]:5000"));
        assert!(!is_loopback("ghcr.io") && !is_loopback("10.0.0.1:5000"));
    }
}
