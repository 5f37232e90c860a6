//! The legacy SIP side.
