//! v4post dashboard
