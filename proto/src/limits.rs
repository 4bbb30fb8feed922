//! Protocol limits, enforced by both sides. The `.proto` comments state the same numbers.

/// Largest encoded gRPC message either side sends or accepts, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Most items (upserts + removals) in one `Update`, or items in one `VersionPage`.
pub const MAX_ITEMS: usize = 1_000;
/// Largest total of data key and value bytes in one `SecretPayload` (Kubernetes' Secret limit).
pub const MAX_SECRET_DATA_BYTES: usize = 1024 * 1024;
/// Most keys an agent may report as applied.
pub const MAX_APPLIED: usize = 10_000;
/// Longest `ItemError.message`, in bytes.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1_024;
/// Longest `agent_version`, in bytes.
pub const MAX_AGENT_VERSION_BYTES: usize = 64;
/// Most namespaces in one `SecretPayload`.
pub const MAX_NAMESPACES: usize = 1_000;
/// Most unacknowledged Updates per stream the hub may announce in `Welcome.max_inflight`.
pub const MAX_INFLIGHT: u32 = 16;
