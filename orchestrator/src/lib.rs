//! v4post orchestrator
