//! Helpers shared by the integration tests of this crate. Include with
//! `mod support;`; each test file uses only some of them.
#![allow(dead_code)]

pub(crate) mod redis;
