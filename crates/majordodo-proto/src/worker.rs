//! The broker↔worker protocol: frames, codec and handshake.
