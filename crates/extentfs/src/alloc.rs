//! Free space.
