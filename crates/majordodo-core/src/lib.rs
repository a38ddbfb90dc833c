//! majordodo-core: under construction.
