//! Signatures over component digests (ed25519).
//!
//! The scheme, so that other tools can sign and verify too:
//! * keys are 32-byte ed25519 keys written as standard base64 (a private key
//!   file holds the 32-byte seed; a public key is the 32-byte point);
//! * the signed message is the ASCII text `mercato-component-signature-v1:`
//!   followed by the component's digest, e.g. `sha256:9f86d0…` — the digest of
//!   the component bytes (the OCI layer), so the same signature holds for an
//!   upload and for any tag or registry the artifact is copied to;
//! * the signature is 64 bytes, written as standard base64. Over the API it
//!   travels in the `x-mercato-signature` header; in an OCI registry it is an
//!   artifact under the tag `sha256-<hex>.sig` of the same repository (the
//!   tag scheme cosign uses; docker-registry 2.8 has no referrers API), whose
//!   one layer ([`SIGNATURE_MEDIA_TYPE`]) is the JSON
//!   `{"digest": "sha256:…", "signature": "<base64>", "public_key": "<base64>"}`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

pub const MESSAGE_PREFIX: &str = "mercato-component-signature-v1:";
pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.mercato.signature.v1+json";
pub const SIGNATURE_CONFIG_MEDIA_TYPE: &str = "application/vnd.mercato.signature.config.v1+json";

/// The OCI tag of the signature of the component with `digest`.
pub fn tag_for(digest: &str) -> String {
    digest.replacen(':', "-", 1) + ".sig"
}

/// A signature document as stored in a registry.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SignatureDoc {
    pub digest: String,
    pub signature: String,
    pub public_key: String,
}

fn message(digest: &str) -> Vec<u8> {
    format!("{MESSAGE_PREFIX}{digest}").into_bytes()
}

/// A signing key from its base64 seed (a key file's text).
pub fn signing_key(text: &str) -> Result<SigningKey, String> {
    let bytes = STANDARD.decode(text.trim()).map_err(|e| format!("signing key: not base64: {e}"))?;
    let seed: [u8; 32] = bytes.try_into().map_err(|_| "signing key: must be 32 bytes".to_string())?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A verifying key from its base64 text.
pub fn verifying_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes = STANDARD.decode(text.trim()).map_err(|e| format!("public key: not base64: {e}"))?;
    let point: [u8; 32] = bytes.try_into().map_err(|_| "public key: must be 32 bytes".to_string())?;
    VerifyingKey::from_bytes(&point).map_err(|e| format!("public key: {e}"))
}

/// A new key pair: (private seed, public key), both base64.
pub fn generate() -> (String, String) {
    let seed: [u8; 32] = rand::random();
    let key = SigningKey::from_bytes(&seed);
    (STANDARD.encode(seed), STANDARD.encode(key.verifying_key().as_bytes()))
}

/// Sign the component with `digest`.
pub fn sign(key: &SigningKey, digest: &str) -> SignatureDoc {
    SignatureDoc {
        digest: digest.to_string(),
        signature: STANDARD.encode(key.sign(&message(digest)).to_bytes()),
        public_key: STANDARD.encode(key.verifying_key().as_bytes()),
    }
}

/// Which keys a deploy must be signed with; none: signatures are not required.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    keys: Vec<VerifyingKey>,
}

impl Policy {
    /// From the configured base64 public keys.
    pub fn new(keys: &[String]) -> Result<Policy, String> {
        Ok(Policy { keys: keys.iter().map(|k| verifying_key(k)).collect::<Result<_, _>>()? })
    }

    pub fn required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Accept `signature` (base64) over `digest` if one configured key made it.
    pub fn verify(&self, digest: &str, signature: Option<&str>) -> Result<(), String> {
        if !self.required() {
            return Ok(());
        }
        let Some(signature) = signature else {
            return Err(format!(
                "signatures are required and {digest} is unsigned (sign it with `mercato push --sign KEY`, \
                 or send the x-mercato-signature header)"
            ));
        };
        let bytes =
            STANDARD.decode(signature.trim()).map_err(|_| "the signature is not base64".to_string())?;
        let signature =
            Signature::from_slice(&bytes).map_err(|_| "the signature is not 64 bytes".to_string())?;
        let message = message(digest);
        if self.keys.iter().any(|k| k.verify(&message, &signature).is_ok()) {
            Ok(())
        } else {
            Err(format!("the signature over {digest} was not made by any configured key"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_right_key_and_digest() {
        let (private, public) = generate();
        let (_, other_public) = generate();
        let key = signing_key(&private).expect("key");
        let doc = sign(&key, "sha256:aa");
        assert_eq!(doc.public_key, public);
        let policy = Policy::new(&[public]).expect("policy");
        assert!(policy.verify("sha256:aa", Some(&doc.signature)).is_ok());
        assert!(policy.verify("sha256:ab", Some(&doc.signature)).is_err(), "other digest");
        assert!(policy.verify("sha256:aa", None).is_err(), "unsigned");
        assert!(policy.verify("sha256:aa", Some("bm90IGEgc2ln")).is_err(), "garbage");
        let strangers = Policy::new(&[other_public]).expect("policy");
        assert!(strangers.verify("sha256:aa", Some(&doc.signature)).is_err(), "other key");
        assert!(Policy::default().verify("sha256:aa", None).is_ok(), "no keys: not required");
        assert!(Policy::new(&["short".into()]).is_err());
        assert_eq!(tag_for("sha256:ab12"), "sha256-ab12.sig");
    }
}
