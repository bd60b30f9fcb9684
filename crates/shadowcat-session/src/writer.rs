//! `BatchingWriter`: the one task per store that persists resumption points.
