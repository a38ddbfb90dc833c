//! Accepts worker connections, authenticates them and turns their frames into events.
