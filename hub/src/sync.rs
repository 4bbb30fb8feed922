//! Fleet synchronisation: planning (pure) and, later, the engine that carries plans out.

pub mod plan;
