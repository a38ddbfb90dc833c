//! Every byte Majordodo puts on a wire or on disk.
//!
//! - [`worker`]: the broker↔worker TCP protocol (frames, codec, handshake).
//!
//! Each format is versioned; decoders never panic on outside data.

pub mod worker;
