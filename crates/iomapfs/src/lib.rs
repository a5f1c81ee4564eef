//! The parts of `iomapfs` other programs can use: the random-operation checker behind
//! `iomapfs exercise`, which the fuzz targets drive too.

#![forbid(unsafe_code)]

pub mod exercise;
