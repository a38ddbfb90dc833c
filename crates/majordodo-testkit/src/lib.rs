//! majordodo-testkit: under construction.
