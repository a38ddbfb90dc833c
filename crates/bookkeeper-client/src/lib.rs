//! bookkeeper-client: under construction.
