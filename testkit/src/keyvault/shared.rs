//! The emulator's state as the routes and the handle share it.

use std::sync::Mutex;
use std::sync::atomic::AtomicI64;

use super::auth::{Signer, now};
use super::config::KeyVaultConfig;
use super::faults::{CounterSet, Faults};
use super::store::Vault;

/// What every request handler and the handle share: configuration, the vault, faults, counters
/// and the token signer.
pub(crate) struct Shared {
    pub(crate) config: KeyVaultConfig,
    /// Seconds added to the wall clock for the vault's timestamps (tests shift it).
    pub(crate) clock_offset: AtomicI64,
    vault: Mutex<Vault>,
    pub(crate) faults: Faults,
    pub(crate) counters: CounterSet,
    pub(crate) signer: Signer,
    /// `https://127.0.0.1:PORT` (no trailing slash).
    pub(crate) base: String,
}

impl Shared {
    /// A fresh emulator: an empty vault, no faults, zeroed counters and a random signing key.
    pub(crate) fn new(config: KeyVaultConfig, base: String) -> Self {
        Self {
            config,
            clock_offset: AtomicI64::new(0),
            vault: Mutex::new(Vault::default()),
            faults: Faults::default(),
            counters: CounterSet::default(),
            signer: Signer::random(),
            base,
        }
    }

    /// The vault's clock (unix seconds): wall clock plus the test offset.
    pub(crate) fn now(&self) -> i64 {
        now() + self.clock_offset.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn vault(&self) -> std::sync::MutexGuard<'_, Vault> {
        self.vault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
