//! Extent maps.
