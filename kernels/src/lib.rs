//! kdc's hot loops. A crate of their own so that every build profile optimises them fully
//! (the workspace's dev profile builds kdc's own crates at opt-level 1), and so that they
//! can be tested against plain references in isolation.

pub mod elementwise;
pub mod optim;
pub mod pool;
pub mod unfold;
