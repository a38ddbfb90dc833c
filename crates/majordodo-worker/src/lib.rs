//! majordodo-worker: under construction.
