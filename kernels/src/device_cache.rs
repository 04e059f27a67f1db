//! A host-side structure's copy on the GPU, made by the first GPU call and reused after.

use std::any::Any;
use std::sync::{Arc, OnceLock};

/// Caches the device copy of the metadata it sits in (batch metadata built once per forward
/// pass and read by every layer). Empty until a GPU kernel fills it; a clone starts empty,
/// since the clone may be changed before it is used.
#[derive(Default)]
pub(crate) struct DeviceCache {
    cell: OnceLock<Arc<dyn Any + Send + Sync>>,
}

impl DeviceCache {
    /// The cached value, or the one `make` builds (cached for next time).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn get_or_try_init<T: Any + Send + Sync>(
        &self,
        make: impl FnOnce() -> candle_core::Result<T>,
    ) -> candle_core::Result<Arc<T>> {
        if let Some(v) = self.cell.get().and_then(|v| v.clone().downcast::<T>().ok()) {
            return Ok(v);
        }
        let v = Arc::new(make()?);
        let _ = self.cell.set(v.clone());
        Ok(v)
    }
}

impl Clone for DeviceCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for DeviceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceCache")
    }
}
