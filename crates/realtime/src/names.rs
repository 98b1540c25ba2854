//! Channel and RPC server names, and what their prefix says about them.
//!
//! Names are `[a-zA-Z0-9.:_-]{1,64}`; a name with `:` must start with `pvt:`, `prs:` or
//! `sys:`, and those channels need a channel token (a JWT the backend mints) bound to the
//! session and the channel. Public channels are open to any session.

/// What a `sys:*` watcher subscribes to: every `sys:` channel at once.
pub const ALL_SYSTEM: &str = "sys:*";

/// Why a channel name is refused, or `None` if it is valid.
pub fn invalid_name(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 64 {
        return Some("a channel name has 1 to 64 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '_' | '-')))
    {
        return Some(format!(
            "`{c}` is not allowed in a channel name ([a-zA-Z0-9.:_-])"
        ));
    }
    if name.contains(':') && !needs_token(name) {
        return Some("a channel name with `:` must start with `pvt:`, `prs:` or `sys:`".into());
    }
    None
}

/// Private, presence and system channels need a channel token.
pub fn needs_token(name: &str) -> bool {
    ["pvt:", "prs:", "sys:"].iter().any(|p| name.starts_with(p))
}

/// Members see each other join and leave on presence and system channels.
pub fn has_presence(name: &str) -> bool {
    name.starts_with("prs:") || name.starts_with("sys:")
}

/// System channels, which `sys:*` watchers follow.
pub fn is_system(name: &str) -> bool {
    name.starts_with("sys:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "news",
            "a.b-c_d",
            "pvt:x",
            "prs:room.1",
            "sys:commandControl",
            &"a".repeat(64),
        ] {
            assert_eq!(invalid_name(ok), None, "{ok}");
        }
        for bad in ["", "a b", "x:y", "abc:", &"a".repeat(65), "é", "a/b"] {
            assert!(invalid_name(bad).is_some(), "{bad}");
        }
        assert!(needs_token("pvt:a") && !needs_token("news"));
        assert!(has_presence("sys:a") && has_presence("prs:a") && !has_presence("pvt:a"));
        assert!(is_system("sys:a") && !is_system("prs:a"));
    }
}
