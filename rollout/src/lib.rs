//! v4post rollout
