//! The Majordodo broker runtime.

pub mod worker_listener;
