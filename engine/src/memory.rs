//! How many bytes the KV cache may take under `--gpu-memory-utilization`.

use flint_models::Device;

use crate::error::{EngineError, Result};

/// `fraction` of the device's memory, minus what is already in use (the weights, other
/// processes): the room left for the KV cache. On the CPU, `fraction` of the available RAM.
pub fn cache_budget_bytes(device: &Device, fraction: f32) -> Result<u64> {
    let (free, total) = device_memory(device)?;
    let used = total.saturating_sub(free);
    Ok(((total as f64 * fraction as f64) as u64).saturating_sub(used))
}

/// `(free, total)` bytes of the device's memory.
fn device_memory(device: &Device) -> Result<(u64, u64)> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => {
            let ctx = d.cuda_stream().context().clone();
            let (free, total) = ctx
                .mem_get_info()
                .map_err(|e| EngineError::InvalidConfig { field: "gpu_memory_utilization", reason: format!("cannot query GPU memory: {e}") })?;
            Ok((free as u64, total as u64))
        }
        Device::Cpu => {
            let info = std::fs::read_to_string("/proc/meminfo").map_err(|e| EngineError::InvalidConfig {
                field: "gpu_memory_utilization",
                reason: format!("cannot read /proc/meminfo ({e}); give --kv-cache-memory instead"),
            })?;
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    .map(|kb| kb * 1024)
            };
            match (field("MemAvailable:"), field("MemTotal:")) {
                (Some(free), Some(total)) => Ok((free, total)),
                _ => Err(EngineError::InvalidConfig {
                    field: "gpu_memory_utilization",
                    reason: "no MemAvailable/MemTotal in /proc/meminfo; give --kv-cache-memory instead".into(),
                }),
            }
        }
        #[allow(unreachable_patterns)]
        _ => Err(EngineError::InvalidConfig {
            field: "gpu_memory_utilization",
            reason: "unsupported device; give --kv-cache-memory instead".into(),
        }),
    }
}
