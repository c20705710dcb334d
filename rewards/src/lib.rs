//! v4post rewards
