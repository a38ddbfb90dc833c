//! majordodo-proto: under construction.
