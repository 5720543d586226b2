//! Flow state machine (filled by issue 3).
