//! v4post teachers
