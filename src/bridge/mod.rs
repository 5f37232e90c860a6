//! The bridge: one engine owning every call, with both legs.
