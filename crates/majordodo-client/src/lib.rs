//! majordodo-client: under construction.
