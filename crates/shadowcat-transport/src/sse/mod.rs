//! Server-sent events: an incremental WHATWG decoder and an encoder.
