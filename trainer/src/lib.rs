//! v4post trainer
