//! Precompiled components on disk, keyed by component digest and engine
//! configuration, so a restart deserializes (≈0.2 ms) instead of compiling
//! (≈100+ ms per component).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// Where precompiled artifacts live.
#[derive(Clone, Debug)]
pub struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
}

/// How a component was obtained, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Compiled,
    Cached,
}

impl ArtifactCache {
    pub fn new(dir: &Path, engine: &Engine) -> ArtifactCache {
        // The compatibility hash covers wasmtime's version and every setting
        // that changes generated code; artifacts of another engine never load.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        ArtifactCache { dir: dir.to_path_buf(), engine_key: format!("{:016x}", h.finish()) }
    }

    fn path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.join(format!("{hex}-{}.cwasm", self.engine_key))
    }

    /// The component for `bytes` (whose digest is `digest`): loaded from the
    /// cache if present, else compiled and stored.
    pub fn load(&self, engine: &Engine, digest: &str, bytes: &[u8]) -> anyhow::Result<(Component, Origin)> {
        let path = self.path(digest);
        if path.exists() {
            // SAFETY: the file was written by `Component::serialize` of an
            // engine with the same compatibility hash (part of the name), into
            // the host's private data directory.
            #[allow(unsafe_code)]
            let loaded = unsafe { Component::deserialize_file(engine, &path) };
            match loaded {
                Ok(c) => return Ok((c, Origin::Cached)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "discarding unreadable precompiled artifact")
                }
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Err(e) = self.store(&path, &component) {
            tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "could not cache precompiled component");
        }
        Ok((component, Origin::Compiled))
    }

    fn store(&self, path: &Path, component: &Component) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let bytes = component.serialize()?;
        // Write then rename: a crash never leaves a half-written artifact.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}
