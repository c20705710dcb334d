//! v4post datasets
