//! majordodo-broker: under construction.
