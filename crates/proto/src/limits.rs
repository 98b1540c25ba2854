//! How much a peer may make the decoder buffer.

/// Bounds the decoder enforces while bytes arrive, before it allocates for them.
///
/// Each limit is checked as early as the buffered bytes allow: a `content-length` above
/// `max_body_bytes` is refused when the header block ends, a header block with no blank
/// line is refused as soon as more than `max_header_block_bytes` are buffered, and a body
/// without `content-length` is refused once more than `max_body_bytes` arrive without a NUL.
/// So a peer can never make the decoder hold more than about `max_frame_bytes` of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The whole frame: command line, headers, blank line, body and NUL (not the EOLs
    /// after it). Default: `max_header_block_bytes + max_body_bytes + 1`, so by default it
    /// never binds before the other two; lower it to cap the sum.
    pub max_frame_bytes: usize,
    /// The command line, the header lines and the blank line that ends them, EOLs
    /// included. Default 8 KiB (twice swpt_stomp's 4096).
    pub max_header_block_bytes: usize,
    /// Header lines in one frame. Default 64 (swpt_stomp allows 50).
    pub max_headers: usize,
    /// The body, without its NUL. Default 1 MiB, the same as the HTTP API's
    /// `http_limits.max_body_bytes`.
    pub max_body_bytes: usize,
}

impl Limits {
    pub const DEFAULT_MAX_HEADER_BLOCK_BYTES: usize = 8 * 1024;
    pub const DEFAULT_MAX_HEADERS: usize = 64;
    pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: Self::DEFAULT_MAX_HEADER_BLOCK_BYTES
                + Self::DEFAULT_MAX_BODY_BYTES
                + 1,
            max_header_block_bytes: Self::DEFAULT_MAX_HEADER_BLOCK_BYTES,
            max_headers: Self::DEFAULT_MAX_HEADERS,
            max_body_bytes: Self::DEFAULT_MAX_BODY_BYTES,
        }
    }
}
